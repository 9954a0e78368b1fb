"""The train state, and the split of the parameter tree into trainable and frozen parts by a path regex.

Paths are the '/'-joined T5X names, e.g. `encoder/prompt/prompt/prompt` or `decoder/layers_0/mlp/wi_0/kernel`;
a regex must match the whole path (`re.fullmatch`). Prompt tuning trains `.*/prompt/.*`; full fine-tuning and
pretraining train `.*`.
"""

from __future__ import annotations

import re
from typing import Any

import flax.struct
import jax
from flax import traverse_util

PyTree = Any


def trainable_mask(params: PyTree, trainable_regex: str) -> PyTree:
  """Tree of bools like `params`: True where the '/'-joined path fully matches `trainable_regex`."""
  pattern = re.compile(trainable_regex)
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: bool(pattern.fullmatch("/".join(path))) for path in flat})


def split_params(params: PyTree, trainable_regex: str) -> tuple[PyTree, PyTree]:
  """Splits a nested parameter dict into (trainable, frozen) nested dicts with disjoint leaves.

  Raises:
    ValueError: when the regex selects no parameter (nothing would train).
  """
  pattern = re.compile(trainable_regex)
  flat = traverse_util.flatten_dict(params)
  trainable = {path: v for path, v in flat.items() if pattern.fullmatch("/".join(path))}
  if not trainable:
    examples = ", ".join("/".join(path) for path in list(flat)[:3])
    raise ValueError(f"trainable regex {trainable_regex!r} (PROMPT_REGEX) matches no parameter (paths look like "
                     f"{examples}); fix the regex or add a prompt to the model")
  frozen = {path: v for path, v in flat.items() if path not in trainable}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: PyTree, frozen: PyTree) -> PyTree:
  """Inverse of `split_params`: one nested dict holding both parts."""
  flat = traverse_util.flatten_dict(frozen)
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)


@flax.struct.dataclass
class TrainState:
  """What changes during training. The frozen parameters live outside it and are never donated or saved.

  Attributes:
    step: number of optimizer steps taken, a scalar int32 array.
    trainable: the trainable parameters (a nested dict; for prompt tuning only `encoder/prompt/prompt/prompt`).
    opt_state: the optimizer state of `trainable` only.
  """

  step: jax.Array
  trainable: PyTree
  opt_state: PyTree
