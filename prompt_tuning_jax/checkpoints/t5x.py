"""T5X checkpoints, read and written: the legacy msgpack + zarr layout and the orbax layout.

Legacy (Google's public T5 1.1 and LM-adapted releases): `checkpoint_N/checkpoint` is a flax msgpack file
`{'version': 3, 'optimizer': {'target': params, 'state': {'step': N, 'param_states': slots}}}`. Small arrays sit
inline; each large one is replaced by a tensorstore spec of a zarr v2 array stored beside the file
(`checkpoint_N/target.encoder.layers_0.attention.key.kernel/`), its path relative to the checkpoint directory so
the checkpoint can move. The spec's kvstore driver says where it was written ('file', 'gfile' or 'gcs'); here it
only says "relative": the arrays are read from wherever the checkpoint directory is now, local or gs://.

Orbax (current t5x): `checkpoint_N/state/` is an orbax PyTree checkpoint of the same
`{'target': ..., 'state': ...}` tree (`checkpoint_N/dataset/` holds the input iterator).

Only `target`, the parameters, and `state.step` (`load_t5x_step`) are ever read: optimizer slots stay on disk.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Collection, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from flax import serialization, traverse_util

from prompt_tuning_jax.checkpoints import storage
from prompt_tuning_jax.checkpoints.param_dtype import as_param

CHECKPOINT_FILE = "checkpoint"
ORBAX_STATE_DIR = "state"
# Version 3 stores bfloat16 natively in zarr; version 2 bit-cast it to uint16.
LEGACY_VERSION = 3
# Arrays with fewer elements than this are written inline in the msgpack file (layer-norm scales and relative
# position tables of every T5 1.1 size); larger ones get their own zarr array.
DEFAULT_INLINE_THRESHOLD = 16384
# t5x's chunk target: large enough for few files, small enough for partitioned reads.
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
_GCS_PATH = re.compile(r"gs://([^/]+)/?(.*)")


def checkpoint_dir_kvstore(checkpoint_dir: str) -> dict[str, Any]:
  """Returns the tensorstore kvstore spec of a checkpoint directory: 'file' locally, 'gcs' for gs:// paths."""
  match = _GCS_PATH.fullmatch(checkpoint_dir)
  if match:
    bucket, prefix = match.groups()
    return {"driver": "gcs", "bucket": bucket, "path": prefix.rstrip("/") + "/" if prefix else ""}
  return {"driver": "file", "path": os.path.abspath(checkpoint_dir) + "/"}


def legacy_checkpoint_file(path: str) -> str | None:
  """Returns the `checkpoint` msgpack file that `path` names (the file or its directory), or None.

  Local and other `tf.io.gfile` paths are checked for the file; a gs:// name is returned without a request
  (`load_t5x_legacy`'s read reports a missing file), so a caller choosing between layouts checks it with
  `storage.is_file`.
  """
  if _GCS_PATH.fullmatch(path):
    return path if posixpath.basename(path.rstrip("/")) == CHECKPOINT_FILE else posixpath.join(path, CHECKPOINT_FILE)
  if posixpath.basename(path) == CHECKPOINT_FILE and storage.is_file(path):
    return path
  candidate = posixpath.join(path, CHECKPOINT_FILE)
  return candidate if storage.is_file(candidate) else None


def _is_tensorstore_spec(value: Any) -> bool:
  return isinstance(value, Mapping) and "driver" in value and ("kvstore" in value or "path" in value)


def _zarr_open_spec(spec: Mapping[str, Any], directory_kvstore: Mapping[str, Any], name: str,
                    source: str) -> dict[str, Any]:
  """Turns a stored spec (relative path) into one that opens the array where the checkpoint is now."""
  kvstore = spec.get("kvstore")
  if kvstore is None:  # tensorstore < 0.1.14 kept the path at the top level
    relative = spec["path"]
  elif kvstore.get("driver") in ("file", "gfile", "gcs"):
    relative = kvstore["path"]
  else:
    raise ValueError(f"{source}: parameter {name} is stored with tensorstore kvstore driver "
                     f"{kvstore.get('driver')!r}; expected 'file', 'gfile' or 'gcs' as t5x writes")
  if spec.get("driver") != "zarr":
    raise ValueError(f"{source}: parameter {name} uses tensorstore driver {spec.get('driver')!r}; t5x writes 'zarr'")
  dtype = spec.get("dtype") or spec.get("metadata", {}).get("dtype")
  if dtype in ("uint16", "<u2"):
    raise ValueError(f"{source}: parameter {name} is stored as uint16 (a version-2 t5x checkpoint's bfloat16 bit "
                     "pattern); t5x itself refuses these: re-save the checkpoint with a current t5x")
  return {"driver": "zarr", "kvstore": {**directory_kvstore, "path": directory_kvstore["path"] + relative}}


def _msgpack_contents(raw: bytes, checkpoint_file: str) -> Any:
  """The restored msgpack of a legacy `checkpoint` file; one line naming the file if it is damaged."""
  try:
    return serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises ValueError, UnicodeDecodeError, FormatError, ... for damaged bytes
    raise ValueError(f"{checkpoint_file} is not a readable msgpack file ({type(e).__name__}: {e}; {len(raw)} "
                     "bytes): it is truncated or damaged; copy the checkpoint again") from None


def load_t5x_legacy(path: str, dtype: Any = np.float32, only: Collection[str] | None = None) -> dict[str, Any]:
  """Reads the parameters (`target`) of a legacy T5X checkpoint.

  Args:
    path: the `checkpoint_N` directory or its `checkpoint` file; local or gs://.
    dtype: parameter dtype to cast every array to (bfloat16 checkpoints become float32 by default).
    only: read just these '/'-joined parameter names (e.g. {'token_embedder/embedding'}); None: all.

  Returns:
    Nested dict of numpy arrays with T5X names, e.g. params['encoder']['layers_0']['attention']['query']['kernel']
    of shape [embed, heads * head_dim].
  """
  checkpoint_file = legacy_checkpoint_file(path)
  if checkpoint_file is None:
    raise FileNotFoundError(f"{path} holds no T5X `{CHECKPOINT_FILE}` msgpack file; pass a checkpoint_N directory "
                            "or its checkpoint file")
  checkpoint_dir = posixpath.dirname(checkpoint_file) if _GCS_PATH.fullmatch(path) else os.path.dirname(
      os.path.abspath(checkpoint_file))
  directory_kvstore = checkpoint_dir_kvstore(checkpoint_dir)
  read = ts.KvStore.open(directory_kvstore).result().read(CHECKPOINT_FILE).result()
  if read.state != "value":
    raise FileNotFoundError(f"{checkpoint_file} does not exist; pass a checkpoint_N directory of a T5X checkpoint")
  raw = bytes(read.value)
  if raw.startswith(b"model_checkpoint_path"):
    raise ValueError(f"{checkpoint_file} is a TensorFlow checkpoint index, not a T5X msgpack checkpoint; convert it "
                     "with t5x's scripts/convert_tf_checkpoint.py first")
  contents = _msgpack_contents(raw, checkpoint_file)
  if not isinstance(contents, Mapping):
    raise ValueError(f"{checkpoint_file} is not a T5X checkpoint: its msgpack holds a {type(contents).__name__}")
  optimizer = contents.get("optimizer", contents)  # version 0: a bare flax optimizer state dict
  if not isinstance(optimizer, Mapping) or "target" not in optimizer:
    raise ValueError(f"{checkpoint_file} has no optimizer.target parameter tree (top-level keys: "
                     f"{sorted(contents)}); it is not a T5X checkpoint")

  source = checkpoint_file
  flat = traverse_util.flatten_dict(optimizer["target"], sep="/", is_leaf=lambda _, v: _is_tensorstore_spec(v))
  inline, pending = {}, {}
  for name, value in flat.items():
    if value is None or (isinstance(value, Mapping) and not value):
      continue  # t5x writes None / {} for slots a MultiOptimizer does not use
    if only is not None and name not in only:
      continue
    if _is_tensorstore_spec(value):
      spec = _zarr_open_spec(value, directory_kvstore, name, source)
      pending[name] = ts.open(spec, open=True, read=True)
    else:
      inline[name] = as_param(value, dtype, name, source)
  # Every open/read is issued before any is awaited, so tensorstore fetches the arrays concurrently.
  reads = {name: opened.result().read() for name, opened in pending.items()}
  loaded = {name: as_param(future.result(), dtype, name, source) for name, future in reads.items()}
  return traverse_util.unflatten_dict({**inline, **loaded}, sep="/")


def _chunk_shape(shape: tuple[int, ...], itemsize: int, target_bytes: int) -> list[int]:
  """Largest chunk that divides `shape` evenly with at most `target_bytes`, splitting the largest dim first (t5x)."""
  divisors = [[d for d in range(1, size + 1) if size % d == 0] or [1] for size in shape]
  chunk = [ds[-1] for ds in divisors]
  while int(np.prod(chunk)) * itemsize > target_bytes and max(chunk, default=1) > 1:
    axis = int(np.argmax(chunk))
    divisors[axis].pop()
    chunk[axis] = divisors[axis][-1]
  return chunk


def _write_legacy_tree(tree: Mapping[str, Any], prefix: str, checkpoint_dir: str, inline_threshold: int,
                       chunk_bytes: int) -> dict[str, Any]:
  """Writes large arrays of `tree` as zarr under `checkpoint_dir`; returns the tree to msgpack (specs + inline)."""
  written = {}
  for name, value in traverse_util.flatten_dict(tree, sep="/").items():
    array = np.asarray(value)
    if array.size < inline_threshold:
      written[name] = array
      continue
    relative = f"{prefix}.{name.replace('/', '.')}"
    metadata = {"chunks": _chunk_shape(array.shape, array.dtype.itemsize, chunk_bytes),
                "compressor": {"id": "gzip", "level": 1}, "shape": list(array.shape)}
    spec = {"driver": "zarr", "dtype": array.dtype.name,
            "kvstore": {"driver": "file", "path": os.path.join(checkpoint_dir, relative)}, "metadata": metadata}
    store = ts.open(spec, create=True).result()
    store.write(array).result()
    metadata["dtype"] = store.spec().to_json()["metadata"]["dtype"]  # zarr's name: '<f4', 'bfloat16'
    # The msgpack keeps the path relative so the directory can be moved or copied to gs://.
    written[name] = {**spec, "kvstore": {"driver": "file", "path": relative}, "metadata": metadata}
  return traverse_util.unflatten_dict(written, sep="/")


def save_t5x_legacy(params: Mapping[str, Any], directory: str, step: int = 0, *,
                    inline_threshold: int = DEFAULT_INLINE_THRESHOLD, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                    param_states: Mapping[str, Any] | None = None) -> str:
  """Writes `params` as a legacy T5X checkpoint `directory/checkpoint_{step}/`, as t5x's Checkpointer does.

  Arrays keep their dtype (bfloat16 stays bfloat16, as in some public checkpoints). The directory is written
  under a temporary name and renamed when complete, so a reader never sees half a checkpoint.

  Args:
    params: nested dict of arrays with T5X names.
    directory: the model directory; local paths only.
    step: the step number, in the directory name and in `state.step`.
    inline_threshold: arrays with fewer elements are stored inline in the msgpack file.
    chunk_bytes: target size of a zarr chunk; arrays larger than this are split along their largest dims.
    param_states: optimizer slots to store as `state.param_states` (t5x's Adafactor keeps m, v, v_row, v_col
      there); empty by default, so a t5x run resuming from this checkpoint would find no optimizer state.

  Returns:
    The checkpoint directory written.
  """
  final_dir = os.path.join(directory, f"checkpoint_{step}")
  if os.path.exists(final_dir):
    raise FileExistsError(f"{final_dir} already exists; pick another step or remove it")
  os.makedirs(directory, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix=f"checkpoint_{step}.tmp-", dir=directory)
  try:
    target = _write_legacy_tree(params, "target", tmp_dir, inline_threshold, chunk_bytes)
    state = {"step": np.asarray(step, np.int32)}
    if param_states:  # t5x's load_t5x_checkpoint fails on an empty `param_states`; it accepts none
      state["param_states"] = _write_legacy_tree(param_states, "state.param_states", tmp_dir, inline_threshold,
                                                 chunk_bytes)
    contents = {"version": LEGACY_VERSION, "optimizer": {"target": target, "state": state}}
    with open(os.path.join(tmp_dir, CHECKPOINT_FILE), "wb") as f:
      f.write(serialization.msgpack_serialize(contents))
    os.rename(tmp_dir, final_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  return final_dir


def orbax_state_dir(path: str) -> str | None:
  """Returns the orbax `state` directory that `path` names (`checkpoint_N` or `checkpoint_N/state`), or None.

  `path` may be local or any `tf.io.gfile` path (gs://...).
  """
  for candidate in (posixpath.join(path, ORBAX_STATE_DIR), path):
    if storage.is_file(posixpath.join(candidate, "_METADATA")) or storage.is_file(
        posixpath.join(candidate, "manifest.ocdbt")):
      return candidate
  return None


def load_t5x_orbax(path: str, dtype: Any = np.float32, only: Collection[str] | None = None) -> dict[str, Any]:
  """Reads the parameters (`target`) of an orbax T5X checkpoint, leaving optimizer state on disk.

  Args:
    path: the `checkpoint_N` directory or its `state` subdirectory; local or gs:// (orbax reads buckets itself).
    dtype: parameter dtype to cast every array to.
    only: read just these '/'-joined parameter names; None: all.

  Returns:
    Nested dict of numpy arrays with T5X names.
  """
  state_dir = orbax_state_dir(path)
  if state_dir is None:
    raise FileNotFoundError(f"{path} holds no orbax checkpoint (looked for {ORBAX_STATE_DIR}/_METADATA and "
                            "_METADATA); pass a checkpoint_N directory written by t5x with orbax")
  state_dir = state_dir if "://" in state_dir else os.path.abspath(state_dir)  # orbax wants absolute paths
  metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
  if "target" not in metadata:
    raise ValueError(f"{state_dir}: orbax checkpoint has no 'target' subtree (top-level keys: {sorted(metadata)}); "
                     "it is not a T5X train state")
  target_metadata = dict(metadata["target"])
  if only is not None:
    flat_metadata = traverse_util.flatten_dict(target_metadata, sep="/")
    target_metadata = traverse_util.unflatten_dict({k: v for k, v in flat_metadata.items() if k in only}, sep="/")
    if not target_metadata:
      return {}
  as_numpy = lambda _: ocp.RestoreArgs(restore_type=np.ndarray)  # host arrays: no device holds the whole model
  restore = ocp.args.PyTreeRestore(
      item={"target": jax.tree_util.tree_map(lambda _: 0, target_metadata)},
      restore_args={"target": jax.tree_util.tree_map(as_numpy, target_metadata)},
      partial_restore=True)
  with ocp.PyTreeCheckpointer() as checkpointer:
    target = checkpointer.restore(state_dir, args=restore)["target"]
  flat = traverse_util.flatten_dict(target, sep="/")
  return traverse_util.unflatten_dict({name: as_param(value, dtype, name, state_dir) for name, value in flat.items()},
                                      sep="/")


def save_t5x_orbax(params: Mapping[str, Any], directory: str, step: int = 0, *,
                   param_states: Mapping[str, Any] | None = None) -> str:
  """Writes `params` as t5x lays out an orbax checkpoint: `directory/checkpoint_{step}/state/`.

  The `state` item holds `{'target': params, 'state': {'step': step, 'param_states': param_states}}`; no
  `dataset` item is written (there is no input iterator to save).

  Returns:
    The checkpoint directory written (`directory/checkpoint_{step}`).
  """
  tree = {"target": dict(params), "state": {"step": np.asarray(step, np.int32), "param_states": dict(param_states or {})}}
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True)
  with ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=(ORBAX_STATE_DIR,)) as manager:
    manager.save(step, args=ocp.args.Composite(**{ORBAX_STATE_DIR: ocp.args.PyTreeSave(tree)}))
    manager.wait_until_finished()
  return os.path.join(directory, f"checkpoint_{step}")


def load_t5x_step(path: str) -> int:
  """The optimizer step a T5X checkpoint (legacy or orbax) was saved at: its `state.step`.

  t5x continues from this step when it fine-tunes or prompt-tunes from the checkpoint (1,100,000 for the public
  T5 1.1 LM-adapted ones); `training.trainer.start_optimizer_at` does the same for our optimizer.

  Args:
    path: the `checkpoint_N` directory (or its `checkpoint` file, or its orbax `state` directory); local or gs://.
  """
  checkpoint_file = legacy_checkpoint_file(path)
  if checkpoint_file is not None and storage.is_file(checkpoint_file):
    contents = _msgpack_contents(storage.read_bytes(checkpoint_file), checkpoint_file)
    state = contents.get("optimizer", contents).get("state", {}) if isinstance(contents, Mapping) else {}
    step = state.get("step") if isinstance(state, Mapping) else None
  else:
    state_dir = orbax_state_dir(path)
    if state_dir is None:
      raise FileNotFoundError(f"{path} holds no T5X checkpoint (legacy `{CHECKPOINT_FILE}` or orbax "
                              f"`{ORBAX_STATE_DIR}/`); pass a checkpoint_N directory")
    state_dir = state_dir if "://" in state_dir else os.path.abspath(state_dir)
    metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
    step = None
    if "step" in dict(metadata.get("state", {})):
      restore = ocp.args.PyTreeRestore(item={"state": {"step": 0}},
                                       restore_args={"state": {"step": ocp.RestoreArgs(restore_type=np.ndarray)}},
                                       partial_restore=True)
      with ocp.PyTreeCheckpointer() as checkpointer:
        step = checkpointer.restore(state_dir, args=restore)["state"]["step"]
  if step is None:
    raise ValueError(f"{path} stores no state.step; it is not a T5X train state (t5x writes one in every checkpoint)")
  return int(np.asarray(step))
