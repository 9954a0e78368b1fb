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
import jax.numpy as jnp
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


def frozen_dtype_or_none(frozen_dtype: Any | None) -> Any | None:
  """FROZEN_PARAM_DTYPE as a floating-point numpy dtype (None stays None); a clear error for anything else."""
  if frozen_dtype is None:
    return None
  try:
    dtype = jnp.dtype(frozen_dtype)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"FROZEN_PARAM_DTYPE {frozen_dtype!r} is not a floating-point dtype; use 'bfloat16', "
                     "'float32' or None")
  return dtype


def cast_frozen(params: PyTree, trainable_regex: str, frozen_dtype: Any | None) -> PyTree:
  """Stores the frozen parameters in `frozen_dtype` (e.g. bfloat16: half the memory); trainable ones in float32.

  Array by array, each float32 original deleted once cast, so the peak is the float32 tree plus one array.
  The model casts kernels to its activation dtype where it uses them, so bfloat16 weights with bfloat16
  activations do exactly what float32 weights rounded to bfloat16 would.

  Args:
    params: the complete parameter tree: jax arrays (possibly sharded; they are consumed), numpy arrays, or
      tracers (inside jit, e.g. an init function that builds the model straight in bfloat16).
    trainable_regex: PROMPT_REGEX; matching parameters (and so their optimizer state) stay float32.
    frozen_dtype: dtype of the frozen parameters, or None to leave the tree as it is.
  """
  frozen_dtype = frozen_dtype_or_none(frozen_dtype)
  if frozen_dtype is None:
    return params
  pattern = re.compile(trainable_regex)

  def cast(path, value):
    dtype = jnp.float32 if pattern.fullmatch("/".join(path)) else frozen_dtype
    if value.dtype == dtype:
      return value
    cast_value = value.astype(dtype)
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):  # under jit nothing to free
      value.delete()
    return cast_value

  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: cast(path, value) for path, value in flat.items()})


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
