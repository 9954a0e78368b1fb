"""The frozen model's parameters from any checkpoint this package reads, checked against the model.

`load_params` recognises the layout (T5X legacy, T5X orbax, Hugging Face) and returns T5X-named numpy arrays
plus the config fields the checkpoint determines; `merge_frozen` then takes every parameter the model expects
from them, shapes checked, leaving out the ones a regex reserves for their initializers (the prompt).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from flax import traverse_util

from prompt_tuning_jax.checkpoints import hf, storage, t5x
from prompt_tuning_jax.checkpoints.inferred_config import infer_config

# Parameters the checkpoint may hold beyond the model's: optimizer slots, never loaded into the model.
_OPTIMIZER_SLOT = re.compile(r"(^|.*/)(param_states|opt_state)(/.*|$)|^state/.*")
# How many names an error lists before summarising the rest.
_LISTED = 5


def load_params(path: str | os.PathLike, dtype: Any = np.float32) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads the parameters of a T5X (legacy or orbax) or Hugging Face T5 1.1 checkpoint.

  Args:
    path: a T5X `checkpoint_N` directory (or its `checkpoint` file, or its orbax `state` directory) or a
      Hugging Face model directory; local or any `tf.io.gfile` path (gs://...).
    dtype: parameter dtype (bfloat16 checkpoints are cast to it).

  Returns:
    (params, inferred): params is a nested dict of numpy arrays with T5X names; inferred holds the T5Config
    fields the checkpoint determines (see `inferred_config.infer_config`; Hugging Face directories add
    relative_attention_max_distance and layer_norm_epsilon from config.json). Check a config against it with
    `inferred_config.check_config`.
  """
  path = os.fspath(path)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  checkpoint_file = t5x.legacy_checkpoint_file(path)
  if checkpoint_file is not None and storage.is_file(checkpoint_file):  # gs:// names come back unchecked
    params = t5x.load_t5x_legacy(checkpoint_file, dtype)
  elif t5x.orbax_state_dir(path) is not None:
    params = t5x.load_t5x_orbax(path, dtype)
  elif hf.is_hf_dir(path):
    return hf.load_hf_t5(path, dtype)
  else:
    # gfile lists a bucket's subdirectories with a trailing '/'.
    steps = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path)
                   if re.fullmatch(r"checkpoint_\d+/?", name)) if tf.io.gfile.isdir(path) else []
    hint = f"; it holds {', '.join(steps)}: pass one of those directories" if steps else ""
    raise ValueError(f"{path} is not a checkpoint this package reads: looked for `{t5x.CHECKPOINT_FILE}` (T5X "
                     f"legacy), `{t5x.ORBAX_STATE_DIR}/_METADATA` (T5X orbax) and `{hf.CONFIG_FILE}` + "
                     f"`{hf.WEIGHTS_FILE}` (Hugging Face){hint}")
  return params, infer_config(params, path)


def load_param(path: str | os.PathLike, name: str, dtype: Any = np.float32) -> np.ndarray:
  """One parameter (a '/'-joined T5X name, e.g. 'token_embedder/embedding') of a checkpoint `load_params` reads.

  T5X checkpoints read only that array; a Hugging Face directory is read whole.
  """
  path = os.fspath(path)
  checkpoint_file = t5x.legacy_checkpoint_file(path)
  if checkpoint_file is not None and storage.is_file(checkpoint_file):
    params = t5x.load_t5x_legacy(checkpoint_file, dtype, only={name})
  elif t5x.orbax_state_dir(path) is not None:
    params = t5x.load_t5x_orbax(path, dtype, only={name})
  else:
    params, _ = load_params(path, dtype)
  flat = traverse_util.flatten_dict(params, sep="/")
  if name not in flat:
    raise ValueError(f"{path} holds no parameter {name}; pass a T5 1.1 checkpoint with T5X parameter names")
  return flat[name]


def checkpoint_step(path: str | os.PathLike) -> int:
  """The training step a checkpoint `load_params` reads was saved at: a T5X checkpoint's `state.step`, or 0 for a
  Hugging Face directory (which stores none)."""
  path = os.fspath(path)
  checkpoint_file = t5x.legacy_checkpoint_file(path)
  if (checkpoint_file is not None and storage.is_file(checkpoint_file)) or t5x.orbax_state_dir(path) is not None:
    return t5x.load_t5x_step(path)
  if hf.is_hf_dir(path):
    return 0
  raise ValueError(f"{path} is neither a T5X checkpoint (legacy or orbax) nor a Hugging Face T5 directory; pass a "
                   "checkpoint_N directory or a Hugging Face model directory")


def _listed(names: list[str]) -> str:
  more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
  return ", ".join(names[:_LISTED]) + more


def check_params_match(expected_tree: Mapping[str, Any], loaded: Mapping[str, Any], source: str,
                       skip_regex: str | None = None) -> None:
  """Raises one ValueError line if `loaded` cannot supply exactly the parameters `expected_tree` describes.

  Args:
    expected_tree: the model's (unboxed) parameter tree: arrays or jax.ShapeDtypeStruct.
    loaded: the checkpoint's parameter tree (`load_params`).
    source: the checkpoint path, named in the message.
    skip_regex: parameters whose '/'-joined path fully matches it are not taken from the checkpoint (e.g.
      'encoder/prompt/.*'); the checkpoint may hold them or not.
  """
  skip = re.compile(skip_regex) if skip_regex else None
  expected = {path: leaf for path, leaf in traverse_util.flatten_dict(expected_tree, sep="/").items()
              if not (skip and skip.fullmatch(path))}
  found = traverse_util.flatten_dict(loaded, sep="/")
  for path, leaf in expected.items():
    if not hasattr(leaf, "shape"):
      raise TypeError(f"expected parameter {path} is a {type(leaf).__name__}, not an array or ShapeDtypeStruct; "
                      "unbox the tree first (flax.core.meta.unbox)")
  missing = sorted(path for path in expected if path not in found)
  if missing:
    raise ValueError(f"{source} lacks {len(missing)} parameters the model expects: {_listed(missing)}; the "
                     "checkpoint is for another model, or pass skip_regex for parameters it is not meant to hold")
  wrong = [f"{path} is {tuple(found[path].shape)} in the checkpoint, the model expects {tuple(leaf.shape)}"
           for path, leaf in sorted(expected.items()) if tuple(found[path].shape) != tuple(leaf.shape)]
  if wrong:
    raise ValueError(f"{source} does not fit the model: {_listed(wrong)}; the checkpoint is for another model "
                     "size: set the T5Config from load_params' inferred fields")
  extra = sorted(path for path in found if path not in expected and not _OPTIMIZER_SLOT.fullmatch(path)
                 and not (skip and skip.fullmatch(path)))
  if extra:
    raise ValueError(f"{source} holds {len(extra)} parameters the model does not have: {_listed(extra)}; the "
                     "model config lacks part of the checkpoint's network (or pass skip_regex to ignore them)")


def merge_frozen(expected_tree: Mapping[str, Any], loaded: Mapping[str, Any], source: str,
                 skip_regex: str | None = None) -> dict[str, Any]:
  """Takes every parameter the model expects from the checkpoint, after `check_params_match`.

  Args:
    expected_tree: the model's (unboxed) parameter tree: arrays or jax.ShapeDtypeStruct (e.g. from
      `jax.eval_shape(model.init, ...)`); only shapes and dtypes are used.
    loaded: the checkpoint's parameter tree (`load_params`).
    source: the checkpoint path, named in errors.
    skip_regex: parameters whose '/'-joined path fully matches it (e.g. 'encoder/prompt/.*') are left out of
      the result, for their initializers to create (`prompts.init_missing_params`).

  Returns:
    Nested dict of numpy arrays: the expected tree minus the skipped parameters, each array in the expected
    dtype.
  """
  check_params_match(expected_tree, loaded, source, skip_regex)
  skip = re.compile(skip_regex) if skip_regex else None
  found = traverse_util.flatten_dict(loaded, sep="/")
  merged = {path: np.asarray(found[path], dtype=leaf.dtype)
            for path, leaf in traverse_util.flatten_dict(expected_tree, sep="/").items()
            if not (skip and skip.fullmatch(path))}
  return traverse_util.unflatten_dict(merged, sep="/")
