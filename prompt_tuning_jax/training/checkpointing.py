"""Train-state checkpoints in MODEL_DIR (orbax, T5X's orbax layout) and the per-step prompt export.

`MODEL_DIR/checkpoint_N/state/` holds `{'target': trainable params, 'state': {'step', 'param_states'}}`, the
layout t5x writes with orbax, so `checkpoints.load_params` reads a pretrained or fully fine-tuned model back as an
INITIAL_CHECKPOINT_PATH. The frozen model is not saved: it comes from INITIAL_CHECKPOINT_PATH on every start.
`checkpoint_N/input_position/` records where the step-indexed input pipeline resumes. Every process calls `save`
(orbax coordinates the writes); only process 0 writes the prompt export.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from prompt_tuning_jax.checkpoints import prompt_files
from prompt_tuning_jax.training import partitioning
from prompt_tuning_jax.training.train_state import TrainState

STATE_ITEM = "state"
INPUT_POSITION_ITEM = "input_position"
PROMPT_PATH = ("encoder", "prompt", "prompt", "prompt")


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
    async_save: write checkpoints in a background thread after the device-to-host copy.
  """

  def __init__(self, model_dir: str, *, keep: int | None = None, best_metric: str | None = None,
               best_mode: str = "min", export_peft: Mapping[str, Any] | None = None, async_save: bool = True):
    if keep is not None and keep < 1:
      raise ValueError(f"keep_checkpoints must be at least 1 (or None for all), got {keep}")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    self.model_dir = absolute_dir(model_dir)
    self.best_metric = best_metric
    self._export_peft = dict(export_peft) if export_peft is not None else None
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
    """Saves `state` at its step (every process must call this); exports the prompt. Returns the step."""
    step = int(partitioning.fetch(state.step))
    if step in self._manager.all_steps():
      return step  # a resumed run re-reaching a saved step must not overwrite it
    finite_metrics = None
    if metrics is not None:
      finite_metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    self._manager.save(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(_as_tree(state)),
        INPUT_POSITION_ITEM: ocp.args.JsonSave(dict(input_position)),
    }), metrics=finite_metrics, force=True)
    self._export_prompt(step, state.trainable)
    return step

  def _export_prompt(self, step: int, trainable: Any) -> None:
    flat = traverse_util.flatten_dict(trainable)
    if PROMPT_PATH not in flat:  # full fine-tuning and pretraining have no prompt
      return
    prompt = partitioning.fetch(flat[PROMPT_PATH])  # replicated: every process can read it
    if jax.process_index() == 0:
      export_prompt(prompt, self.model_dir, step, self._export_peft)

  def check_compatible(self, step: int, abstract_state: TrainState) -> None:
    """Raises one line if checkpoint `step` cannot be restored into `abstract_state` (other model or prompt)."""
    metadata = self._manager.item_metadata(step)[STATE_ITEM]
    saved = traverse_util.flatten_dict(dict(metadata["target"]), sep="/")
    expected = traverse_util.flatten_dict(abstract_state.trainable, sep="/")
    where = os.path.join(self.model_dir, f"checkpoint_{step}")
    if set(saved) != set(expected):
      raise ValueError(f"{where} trains {sorted(saved)[:3]}, this run trains {sorted(expected)[:3]}; resume with "
                       "the run's original PROMPT_REGEX and model, or use a new MODEL_DIR")
    for name, leaf in expected.items():
      if tuple(saved[name].shape) != tuple(leaf.shape):
        raise ValueError(f"{where} holds {name} of shape {tuple(saved[name].shape)}, this run's model expects "
                         f"{tuple(leaf.shape)}; resume with the original PROMPT_LENGTH and model size, or use a "
                         "new MODEL_DIR")

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores checkpoint `step` into the shapes and shardings of `abstract_state` (ShapeDtypeStructs)."""
    self.check_compatible(step, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(_as_tree(abstract_state)),
        INPUT_POSITION_ITEM: ocp.args.JsonRestore(),
    }))
    tree = restored[STATE_ITEM]
    state = TrainState(step=tree["state"]["step"], trainable=tree["target"], opt_state=tree["state"]["param_states"])
    return state, dict(restored[INPUT_POSITION_ITEM])

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

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
