"""Train-state checkpoints in MODEL_DIR (orbax, T5X's orbax layout) and the per-step prompt export.

`MODEL_DIR/checkpoint_N/state/` holds `{'target': trainable params, 'state': {'step', 'param_states'}}`, the
layout t5x writes with orbax, so `checkpoints.load_params` reads a pretrained or fully fine-tuned model back as an
INITIAL_CHECKPOINT_PATH. The frozen model is not saved: it comes from INITIAL_CHECKPOINT_PATH on every start.
`checkpoint_N/input_position/` records where the step-indexed input pipeline resumes. Every process calls `save`
(orbax coordinates the writes); only process 0 writes the prompt export.

A checkpoint and its prompt export are one unit: the export of step N is written only after checkpoint N is
committed (a failed save leaves none), and `ensure_exports` re-writes a committed checkpoint's missing or partial
export from its state. A checkpoint that cannot be restored is moved aside to `MODEL_DIR/damaged_checkpoint_N`
(never deleted) by `move_aside`, with its exports.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
from flax import traverse_util
from jax.experimental import multihost_utils

from prompt_tuning_jax.checkpoints import prompt_files, t5x
from prompt_tuning_jax.training import partitioning
from prompt_tuning_jax.training.train_state import TrainState

STATE_ITEM = "state"
INPUT_POSITION_ITEM = "input_position"
PROMPT_PATH = ("encoder", "prompt", "prompt", "prompt")
EXPORT_DIRS = ("numpy_checkpoints", "peft_adapters")
DAMAGED_PREFIX = "damaged_"  # not orbax's `checkpoint_` prefix, so a moved-aside step is never listed again


class CheckpointSaveError(OSError):
  """Writing a checkpoint (or its export) failed: disk full, permission lost, bucket unreachable."""


class IncompatibleCheckpointError(ValueError):
  """A readable checkpoint of another run (another model, prompt, task, batch size): refused, never moved."""


class NoIntactCheckpointError(ValueError):
  """MODEL_DIR holds checkpoints but none of them can be restored."""


class _DropUntrackedMetricWarning(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Requested `tracked_metric`")


@contextlib.contextmanager
def _without_untracked_metric_warning() -> Iterator[None]:
  """orbax warns at every save between evaluations when a best metric is tracked; that is expected here (those
  checkpoints are kept by recency only), so the warning is noise."""
  quiet = _DropUntrackedMetricWarning()
  logging.getLogger("absl").addFilter(quiet)
  try:
    yield
  finally:
    logging.getLogger("absl").removeFilter(quiet)


@contextlib.contextmanager
def _stray_restore_tracebacks_hidden(grace_s: float = 0.5) -> Iterator[None]:
  """When an orbax restore fails on damaged files, tensorstore reads still in flight finish after orbax closed its
  asyncio loop and raise 'Event loop is closed' in callbacks (unraisable exceptions, printed as tracebacks); the
  failure itself is reported in one line instead, so those are dropped (for `grace_s` more seconds after it)."""
  previous_hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    with contextlib.redirect_stderr(io.StringIO()):
      try:
        yield
      except BaseException:
        time.sleep(grace_s)
        raise
  finally:
    sys.unraisablehook = previous_hook


def failure_cause(error: BaseException) -> str:
  """The root cause of an I/O failure as a short phrase (e.g. 'No space left on device')."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return seen.strerror
    if isinstance(seen, tf.errors.OpError):
      return seen.message.splitlines()[0]
    seen = seen.__cause__ or seen.__context__
  text = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def absolute_dir(path: str) -> str:
  """A local path made absolute; a URL such as gs://bucket/run (orbax and tf.io.gfile write there) kept as is."""
  return path if "://" in path else os.path.abspath(path)


def _as_tree(state: TrainState) -> dict[str, Any]:
  return {"target": state.trainable, "state": {"step": state.step, "param_states": state.opt_state}}


class Checkpoints:
  """Saves and restores the train state under MODEL_DIR, keeping the latest `keep` plus the best by a metric.

  Args:
    model_dir: MODEL_DIR (checkpoints go to MODEL_DIR/checkpoint_N).
    keep: how many of the latest checkpoints to keep (None: all).
    best_metric: the eval metric (e.g. 'validation/loss') whose best checkpoint is kept beyond `keep`
      (the paper's early stopping), or None.
    best_mode: 'min' or 'max' for `best_metric`.
    export_peft: also write MODEL_DIR/peft_adapters/checkpoint_N/ (a PEFT prompt-tuning adapter) per save;
      a dict of `prompt_files.save_peft_adapter` keyword arguments (num_layers, num_attention_heads, ...).
    async_save: write checkpoints in a background thread after the device-to-host copy (the export then follows
      at the next save or `wait_until_finished`). A prompt is kilobytes: synchronous saves cost nothing there.
  """

  def __init__(self, model_dir: str, *, keep: int | None = None, best_metric: str | None = None,
               best_mode: str = "min", export_peft: Mapping[str, Any] | None = None, async_save: bool = False):
    if keep is not None and keep < 1:
      raise ValueError(f"keep_checkpoints must be at least 1 (or None for all), got {keep}")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    self.model_dir = absolute_dir(model_dir)
    self.best_metric = best_metric
    self._export_peft = dict(export_peft) if export_peft is not None else None
    self._async = async_save
    self._pending_export: tuple[int, np.ndarray] | None = None
    policies = [ocp.checkpoint_managers.LatestN(keep)]
    best_fn = None
    if best_metric is not None:
      worst = math.inf if best_mode == "min" else -math.inf
      best_fn = lambda metrics: metrics.get(best_metric, worst)
      policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                                    keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        step_prefix="checkpoint", create=True, enable_async_checkpointing=async_save, best_fn=best_fn,
        best_mode=best_mode, preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
    handlers = {STATE_ITEM: ocp.StandardCheckpointHandler(), INPUT_POSITION_ITEM: ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.model_dir, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The kept step with the best `best_metric` (None before any evaluated checkpoint)."""
    if self.best_metric is None:
      return None
    return self._manager.best_step()  # among checkpoints saved with metrics

  def save(self, state: TrainState, input_position: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> int:
    """Saves `state` at its step (every process must call this), then exports its prompt. Returns the step.

    Raises:
      CheckpointSaveError: the checkpoint or its export could not be written (one line naming the directory and
        the cause); earlier checkpoints are untouched.
    """
    step = int(partitioning.fetch(state.step))
    if step in self._manager.all_steps():
      return step  # a resumed run re-reaching a saved step must not overwrite it
    self._write_pending_export()  # an async save's export, once that checkpoint has committed
    finite_metrics = None
    if metrics is not None:
      finite_metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    prompt = self._host_prompt(state.trainable)
    try:
      with _without_untracked_metric_warning():
        self._manager.save(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(_as_tree(state)),
            INPUT_POSITION_ITEM: ocp.args.JsonSave(dict(input_position)),
        }), metrics=finite_metrics, force=True)
    except Exception as e:  # orbax and tensorstore raise many types for one cause; name the cause
      raise self._save_error(step, e) from None
    if prompt is not None:
      self._pending_export = (step, prompt)
      if not self._async:
        self._write_pending_export()
    return step

  def _save_error(self, step: int, error: BaseException) -> CheckpointSaveError:
    previous = [s for s in self._manager.all_steps() if s < step]
    kept = (f"checkpoint_{max(previous)} is the latest intact checkpoint" if previous
            else "no earlier checkpoint exists")
    return CheckpointSaveError(f"saving checkpoint_{step} to {self.model_dir} failed ({failure_cause(error)}); "
                               f"{kept}; free disk space or fix the directory's permissions, then re-run to resume")

  def _host_prompt(self, trainable: Any) -> np.ndarray | None:
    flat = traverse_util.flatten_dict(trainable)
    if PROMPT_PATH not in flat:  # full fine-tuning and pretraining have no prompt
      return None
    return partitioning.fetch(flat[PROMPT_PATH])  # replicated: every process can read it

  def _write_pending_export(self) -> None:
    """Exports the prompt of the last save, after waiting for that checkpoint to commit."""
    if self._pending_export is None:
      return
    step, prompt = self._pending_export
    self._pending_export = None
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(step, e) from None
    if jax.process_index() != 0:
      return
    try:
      export_prompt(prompt, self.model_dir, step, self._export_peft)
    except Exception as e:
      raise CheckpointSaveError(f"checkpoint_{step} in {self.model_dir} is saved but exporting its prompt failed "
                                f"({failure_cause(e)}); free disk space or fix permissions, then re-run: the export "
                                "is written again at start-up") from None

  def _export_ok(self, step: int, prompt_shape: tuple[int, ...]) -> bool:
    paths = [os.path.join(self.model_dir, "numpy_checkpoints", f"checkpoint_{step}", prompt_files.NUMPY_PROMPT_NAME)]
    if self._export_peft is not None:
      paths.append(os.path.join(self.model_dir, "peft_adapters", f"checkpoint_{step}"))
    for path in paths:
      try:
        if prompt_files.load_prompt(path).shape != tuple(prompt_shape):
          return False
      except Exception:  # missing, truncated or garbled: all mean "write it again"
        return False
    return True

  def ensure_exports(self, prompt_shape: tuple[int, ...] | None) -> list[int]:
    """Re-exports every committed checkpoint whose prompt export is missing or unreadable (a run stopped between
    the commit and the export). Every process calls it; process 0 writes. Returns the steps re-exported.

    Args:
      prompt_shape: the prompt's [prompt_length, embed], or None when the run trains no prompt (nothing to do).
    """
    if prompt_shape is None:
      return []
    redone = []
    for step in self.all_steps():
      if self._export_ok(step, prompt_shape):
        continue
      target = t5x.load_t5x_orbax(os.path.join(self.model_dir, f"checkpoint_{step}"))
      prompt = traverse_util.flatten_dict(target)[PROMPT_PATH]
      if jax.process_index() == 0:
        try:
          export_prompt(prompt, self.model_dir, step, self._export_peft)
        except Exception as e:
          raise CheckpointSaveError(f"re-exporting the prompt of checkpoint_{step} to {self.model_dir} failed "
                                    f"({failure_cause(e)}); free disk space or fix permissions") from None
      redone.append(step)
    return redone

  def check_compatible(self, step: int, abstract_state: TrainState) -> None:
    """Raises one line if checkpoint `step` cannot be restored into `abstract_state` (other model or prompt).

    Raises:
      IncompatibleCheckpointError: the checkpoint is readable but holds other parameters or shapes.
      Exception: whatever reading an unreadable (damaged) checkpoint's metadata raises.
    """
    metadata = self._manager.item_metadata(step)[STATE_ITEM]
    saved = {name: tuple(leaf.shape) for name, leaf in
             traverse_util.flatten_dict(dict(metadata["target"]), sep="/").items()}
    expected = traverse_util.flatten_dict(abstract_state.trainable, sep="/")
    where = os.path.join(self.model_dir, f"checkpoint_{step}")
    if set(saved) != set(expected):
      raise IncompatibleCheckpointError(
          f"{where} trains {sorted(saved)[:3]}, this run trains {sorted(expected)[:3]}; resume with the run's "
          "original PROMPT_REGEX and model, or use a new MODEL_DIR")
    for name, leaf in expected.items():
      if saved[name] != tuple(leaf.shape):
        raise IncompatibleCheckpointError(
            f"{where} holds {name} of shape {saved[name]}, this run's model expects {tuple(leaf.shape)}; resume "
            "with the original PROMPT_LENGTH and model size, or use a new MODEL_DIR")

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores checkpoint `step` into the shapes and shardings of `abstract_state` (ShapeDtypeStructs)."""
    self.check_compatible(step, abstract_state)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardRestore(_as_tree(abstract_state)),
          INPUT_POSITION_ITEM: ocp.args.JsonRestore(),
      }))
    except ValueError as e:
      if "tree structures do not match" not in str(e):
        raise
      # The parameters matched (check_compatible), so the optimizer state's layout differs.
      raise IncompatibleCheckpointError(
          f"{self.model_dir}/checkpoint_{step} holds the optimizer state of another optimizer or optimizer "
          "settings; resume with the original optimizer (its gin bindings), or use a new MODEL_DIR") from None
    tree = restored[STATE_ITEM]
    state = TrainState(step=tree["state"]["step"], trainable=tree["target"], opt_state=tree["state"]["param_states"])
    position = restored[INPUT_POSITION_ITEM]
    if not isinstance(position, Mapping):
      raise ValueError(f"{INPUT_POSITION_ITEM} holds {type(position).__name__}, not a JSON object")
    return state, dict(position)

  def uncommitted_step_dirs(self) -> list[int]:
    """Steps with a `checkpoint_N` directory that orbax does not list as committed (e.g. an empty directory)."""
    committed = set(self._manager.all_steps())
    steps = []
    for entry in tf.io.gfile.listdir(self.model_dir) if tf.io.gfile.isdir(self.model_dir) else []:
      name = entry.rstrip("/")
      if name.startswith("checkpoint_") and name[len("checkpoint_"):].isdigit():
        if int(name[len("checkpoint_"):]) not in committed:
          steps.append(int(name[len("checkpoint_"):]))
    return sorted(steps)

  def restore_latest_intact(self, abstract_state: TrainState
                            ) -> tuple[TrainState | None, dict[str, Any], int | None, list[tuple[int, str]]]:
    """Restores the newest checkpoint that can be restored; moves nothing (see `move_aside`).

    Returns:
      (state, input position, its step, [(newer unrestorable step, why)]); (None, {}, None, [...]) when MODEL_DIR
      has no checkpoint at all.

    Raises:
      IncompatibleCheckpointError: the newest readable checkpoint belongs to another configuration.
      NoIntactCheckpointError: there are checkpoints and none of them can be restored.
    """
    damaged: list[tuple[int, str]] = [(step, "not a committed orbax checkpoint (no metadata)")
                                      for step in self.uncommitted_step_dirs()]
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        with _stray_restore_tracebacks_hidden():
          state, position = self.restore(step, abstract_state)
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # truncated files, missing or empty metadata, garbled JSON: all damage
        damaged.append((step, failure_cause(e)))
        continue
      newer = [(s, why) for s, why in damaged if s > step]
      return state, position, step, sorted(newer)
    if damaged:
      listing = "; ".join(f"checkpoint_{s}: {why}" for s, why in sorted(damaged))
      raise NoIntactCheckpointError(
          f"{self.model_dir} holds no checkpoint that can be restored ({listing}); move the damaged directories "
          "away to start from step 0, or use a new MODEL_DIR")
    return None, {}, None, []

  def move_aside(self, step: int) -> str:
    """Renames checkpoint_N (and its exports) to damaged_checkpoint_N[_k]; never deletes. Every process calls it;
    process 0 renames. Returns the new checkpoint directory name."""
    name = f"checkpoint_{step}"
    target = f"{DAMAGED_PREFIX}{name}"
    suffix = 1
    while tf.io.gfile.exists(os.path.join(self.model_dir, target)):
      suffix += 1
      target = f"{DAMAGED_PREFIX}{name}_{suffix}"
    if jax.process_index() == 0:
      _rename_dir(os.path.join(self.model_dir, name), os.path.join(self.model_dir, target))
      for export_dir in EXPORT_DIRS:
        source = os.path.join(self.model_dir, export_dir, name)
        if tf.io.gfile.exists(source):
          _rename_dir(source, os.path.join(self.model_dir, export_dir, target))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"moved aside {name}")
    self._manager.reload()
    return target

  def wait_until_finished(self) -> None:
    """Waits for the last save to commit, then writes its export."""
    if self._pending_export is not None:
      self._write_pending_export()
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise CheckpointSaveError(f"saving a checkpoint to {self.model_dir} failed ({failure_cause(e)}); free disk "
                                "space or fix the directory's permissions, then re-run to resume") from None

  def close(self) -> None:
    self._manager.close()


def export_prompt(prompt: np.ndarray, model_dir: str, step: int, peft: Mapping[str, Any] | None = None) -> None:
  """Writes the prompt [P, embed] of `step` as MODEL_DIR/numpy_checkpoints/checkpoint_N/encoder.prompt.prompt.prompt
  and, given `peft` (`prompt_files.save_peft_adapter` keyword arguments), MODEL_DIR/peft_adapters/checkpoint_N/.

  `prompt_files` writes through `tf.io.gfile`, so a URL MODEL_DIR (gs://) works as a local one does.
  """
  prompt_files.export_numpy_checkpoint(prompt, model_dir, step)
  if peft is not None:
    prompt_files.save_peft_adapter(prompt, os.path.join(model_dir, "peft_adapters", f"checkpoint_{step}"), **peft)


def read_step_prompt(model_dir: str, step: int) -> np.ndarray:
  """The prompt exported at `step` ([prompt_length, embed]), from MODEL_DIR/numpy_checkpoints."""
  path = os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{step}", prompt_files.NUMPY_PROMPT_NAME)
  return prompt_files.load_prompt(path)


def _rename_dir(source: str, target: str) -> None:
  """Moves a directory: a rename on local disks; a copy then delete of the source where renames of directories are
  not supported (object stores)."""
  if "://" not in source:
    os.replace(source, target)
    return
  try:
    tf.io.gfile.rename(source, target)
  except tf.errors.OpError:
    for root, _, files in tf.io.gfile.walk(source):
      relative = os.path.relpath(root, source)
      tf.io.gfile.makedirs(os.path.join(target, relative))
      for file in files:
        tf.io.gfile.copy(os.path.join(root, file), os.path.join(target, relative, file), overwrite=True)
    tf.io.gfile.rmtree(source)
