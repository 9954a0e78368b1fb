"""The training loop: place the state on the mesh, restore or initialize it, step, log, evaluate, save.

A plain function of plain arguments; `training/runs.py` builds them from gin. Every process runs the same loop;
only process 0 writes logs and prompt exports, while all processes take part in checkpoint saves.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh

from prompt_tuning_jax.training import losses, optimizers, partitioning, preemption, steps, train_state
from prompt_tuning_jax.training.checkpointing import PROMPT_PATH, Checkpoints, IncompatibleCheckpointError
from prompt_tuning_jax.training.input_pipeline import HostBatch
from prompt_tuning_jax.training.metrics_writer import MetricsWriter, ProgressBar
from prompt_tuning_jax.training.train_state import TrainState

PyTree = Any
# evaluate(trainable, frozen) -> {metric name: value}, e.g. {'loss': ..., 'token_accuracy': ...}.
EvaluateFn = Callable[[PyTree, PyTree], Mapping[str, float]]


class NonFiniteLossError(RuntimeError):
  """The loss or the update became NaN/inf; the state was left at the last finite step."""


def say(message: str) -> None:
  """Prints a line for the user on process 0 (stderr, beside the progress bar)."""
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def place_params(params: PyTree, param_axes: PyTree, trainable_regex: str, mesh: Mesh,
                 rules: partitioning.LogicalRules) -> tuple[PyTree, PyTree, PyTree]:
  """Splits `params` by `trainable_regex` and puts both parts on the mesh.

  Args:
    params: the complete (unboxed) parameter tree: global arrays already on `mesh` with their logical
      shardings (`runs.initial_params(..., mesh=mesh)`, the way for models too large for one device), which stay
      where they are, or host arrays every process holds in full.
    param_axes: the same tree of logical `PartitionSpec`s (`nn.get_partition_spec` of the boxed init).
    trainable_regex: PROMPT_REGEX; see `train_state.split_params`.
    mesh, rules: where and how parameters are laid out.

  Returns:
    (trainable, frozen, trainable shardings): global arrays, and the shardings of the trainable ones.
  """
  trainable, frozen = train_state.split_params(params, trainable_regex)
  trainable_axes, frozen_axes = train_state.split_params(param_axes, trainable_regex)
  trainable_shardings = partitioning.logical_shardings(trainable_axes, mesh, rules)
  frozen = partitioning.put_global(frozen, partitioning.logical_shardings(frozen_axes, mesh, rules))
  return partitioning.put_global(trainable, trainable_shardings), frozen, trainable_shardings


def state_shardings(optimizer: optax.GradientTransformation, trainable: PyTree, trainable_shardings: PyTree,
                    mesh: Mesh) -> TrainState:
  """Shardings of the whole train state: the step replicated, optimizer slots following their parameters."""
  abstract_opt_state = jax.eval_shape(optimizer.init, trainable)
  return TrainState(
      step=partitioning.replicated(mesh), trainable=trainable_shardings,
      opt_state=partitioning.optimizer_state_shardings(abstract_opt_state, trainable, trainable_shardings, mesh))


def format_scores(scores: Mapping[str, float]) -> str:
  """One evaluation as one line, every accuracy in percent (the tasks' metrics already are; the teacher-forced
  token accuracy, stored as a fraction, is scaled here), teacher-forced and decoded metrics named apart."""
  teacher_forced = {k: v for k, v in scores.items() if "/" not in k and k != "num_examples"}
  if "token_accuracy" in teacher_forced:
    teacher_forced["token_accuracy"] *= 100
  parts = ["(teacher-forced) " + " ".join(f"{k}={v:.4g}" for k, v in sorted(teacher_forced.items()))]
  tasks = sorted({k.split("/", 1)[0] for k in scores if "/" in k})
  for task in tasks:
    decoded = {k.split("/", 1)[1]: v for k, v in scores.items() if k.startswith(f"{task}/")}
    parts.append(f"{task} (decoded) " + " ".join(f"{k}={v:.4g}" for k, v in sorted(decoded.items())))
  examples = f" on {int(scores['num_examples'])} examples" if "num_examples" in scores else ""
  return "; ".join(parts) + f"{examples}; accuracies in %"


def _init_state(optimizer: optax.GradientTransformation, trainable: PyTree, optimizer_step: int = 0) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                    opt_state=start_optimizer_at(optimizer.init(trainable), optimizer_step))


def start_optimizer_at(opt_state: PyTree, optimizer_step: int) -> PyTree:
  """`opt_state` with every optax step `count` set to `optimizer_step`, as t5x continues a checkpoint's step.

  t5x restores the step of the initial checkpoint (1,100,000 for the paper's T5 1.1 LM-adapted), and its
  Adafactor decays the second moment by `1 - (step + 1) ** -0.8` of that global step (learning-rate schedules
  see it too); optax counts from 0 unless told otherwise. The train state's own `step` still counts this run.
  """
  if optimizer_step == 0 or not optax.tree_utils.tree_get_all_with_path(opt_state, "count"):
    return opt_state
  return optax.tree_utils.tree_set(opt_state, count=jnp.asarray(optimizer_step, jnp.int32))


def _summarize(pending: list[dict[str, np.ndarray]], seconds: float) -> dict[str, float]:
  """Train metrics over the steps since the last report (per target token, per second)."""
  total = {name: float(np.sum([m[name] for m in pending])) for name in pending[0]}
  weight_sum = max(total["weight_sum"], 1.0)
  return {
      "loss": total["loss"] / weight_sum,
      "z_loss": total["z_loss"] / weight_sum,
      "token_accuracy": total["correct"] / weight_sum,
      "grad_norm": total["grad_norm"] / len(pending),
      "tokens_per_second": total["num_tokens"] / max(seconds, 1e-9),
      "steps_per_second": len(pending) / max(seconds, 1e-9),
  }


def train(*, model: nn.Module, params: PyTree, param_axes: PyTree, trainable_regex: str,
          optimizer: optax.GradientTransformation, loss_config: losses.LossConfig, mesh: Mesh,
          rules: partitioning.LogicalRules, train_batches: Callable[[int], Iterator[HostBatch]],
          global_batch_size: int, num_train_steps: int, checkpoints: Checkpoints, save_period: int,
          writer: MetricsWriter, input_position: Mapping[str, Any], evaluate: EvaluateFn | None = None,
          eval_period: int = 0, log_period: int = 10, dropout_seed: int = 0,
          show_progress: bool = True, optimizer_step: int = 0, on_start: Callable[[int], None] | None = None,
          stop_timeout_s: float = preemption.DEFAULT_TIMEOUT_S) -> tuple[TrainState, PyTree]:
  """Trains the parameters `trainable_regex` selects, resuming from the latest checkpoint in `checkpoints`.

  Args:
    model: the `Transformer`.
    params, param_axes: see `place_params`. Global arrays given here are consumed: the trainable ones are
      donated to the initial train state (or deleted when a checkpoint replaces them), so the caller's tree
      holds no second copy of a fully trained model.
    trainable_regex: PROMPT_REGEX.
    optimizer: an optax transformation (see `optimizers`), wrapped in `optimizers.trainable_only`.
    loss_config: z-loss, label smoothing, normalization.
    mesh, rules: the device mesh and logical-axis rules.
    train_batches: `start_step -> iterator` of this process's batches {feature: [host_batch, length]}.
    global_batch_size: BATCH_SIZE over all processes.
    num_train_steps: TRAIN_STEPS, the total number of steps (a resumed run does only the remaining ones).
    checkpoints: MODEL_DIR's checkpoint manager.
    save_period: SAVE_PERIOD; the final step and evaluated steps are saved too.
    writer: metrics.jsonl and TensorBoard writer (disabled on processes other than 0).
    input_position: facts about the input pipeline saved with every checkpoint and checked on resume
      (e.g. the task and batch size); the step is added.
    evaluate: `evaluate(trainable, frozen) -> metrics` on the validation split, or None.
    eval_period: EVAL_PERIOD (0: evaluate only after the last step, if `evaluate` is given).
    log_period: steps between train-metric reports (each report waits for the device).
    dropout_seed: seed of the dropout keys (folded with the step).
    show_progress: draw the progress bar on process 0.
    optimizer_step: the optimizer's step count at step 0 of this run (see `start_optimizer_at`); t5x's is the
      initial checkpoint's step. A resumed run restores it from the checkpoint.
    on_start: called with the first step's number minus one once the run is accepted (checkpoint restored and
      checked), before the loop: the place to write the run's config; nothing is written to MODEL_DIR before it
      except moving damaged checkpoints aside and re-writing missing prompt exports.
    stop_timeout_s: after SIGTERM/SIGINT, the most seconds to wait for the final save before exiting without it.

  Returns:
    (final state, frozen params), both on the mesh.

  Raises:
    NonFiniteLossError: the loss became NaN/inf; no checkpoint is written after the last finite step.
    preemption.TrainingInterrupted: SIGTERM or SIGINT arrived; the current step was finished and saved.
    IncompatibleCheckpointError, NoIntactCheckpointError, ValueError: the run was refused; nothing was written.
  """
  if num_train_steps <= 0:
    raise ValueError(f"TRAIN_STEPS must be positive, got {num_train_steps}")
  if save_period <= 0:
    raise ValueError(f"SAVE_PERIOD must be positive, got {save_period}")
  chief = jax.process_index() == 0
  optimizer = optimizers.trainable_only(optimizer, trainable_regex)
  with partitioning.mesh_context(mesh, rules):
    trainable, frozen, trainable_shardings = place_params(params, param_axes, trainable_regex, mesh, rules)
    del params  # the mesh holds the parameters now
    shardings = state_shardings(optimizer, trainable, trainable_shardings, mesh)
    input_position = json.loads(json.dumps(dict(input_position)))  # as a checkpoint stores it
    state, latest = _restore_or_init(checkpoints, optimizer, trainable, shardings, input_position,
                                     num_train_steps, optimizer_step)
    del trainable
    start_step = int(partitioning.fetch(state.step))
    prompt = traverse_util.flatten_dict(state.trainable).get(PROMPT_PATH)
    for step in checkpoints.ensure_exports(None if prompt is None else tuple(prompt.shape)):
      say(f"train: wrote the missing prompt export of checkpoint_{step}")
    if on_start is not None:
      on_start(start_step)
    train_step = jax.jit(steps.make_train_step(model, optimizer, loss_config, dropout_seed),
                         in_shardings=(shardings, None, partitioning.batch_sharding(mesh)),
                         out_shardings=(shardings, partitioning.replicated(mesh)), donate_argnums=(0,))
    position = lambda step: {**input_position, "step": step}
    progress = ProgressBar(num_train_steps, start_step, enabled=chief and show_progress)
    pending: list[dict[str, Any]] = []
    last_report = time.perf_counter()
    last_good_step = latest

    def report(step: int) -> None:
      """Waits for the pending steps, stops on a non-finite one, and logs their metrics."""
      nonlocal pending, last_report
      if not pending:
        return
      fetched = [partitioning.fetch(m) for m in pending]
      first_step = step - len(fetched) + 1
      for offset, metrics in enumerate(fetched):
        if not metrics.pop("finite"):
          where = (f"{checkpoints.model_dir}/checkpoint_{last_good_step} is the last good checkpoint (kept)"
                   if last_good_step is not None else "no checkpoint was written")
          raise NonFiniteLossError(
              f"training diverged at step {first_step + offset} (loss {float(metrics['loss']):.4g}, gradient norm "
              f"{float(metrics['grad_norm']):.4g}; the loss, gradient or update is NaN/inf) and stopped; {where}; "
              "lower LEARNING_RATE or check the inputs")
      now = time.perf_counter()
      summary = _summarize(fetched, now - last_report)
      last_report, pending = now, []
      writer.write_scalars(step, "train", summary)
      progress.update(len(fetched), summary["loss"], summary["tokens_per_second"])

    batches = train_batches(start_step)
    try:
      with preemption.graceful_stop("train", stop_timeout_s) as stop:
        for step in range(start_step + 1, num_train_steps + 1):
          host_batch = next(batches)
          state, metrics = train_step(state, frozen, partitioning.global_batch(host_batch, mesh, global_batch_size))
          pending.append(metrics)
          is_last = step == num_train_steps
          do_eval = evaluate is not None and (is_last or (eval_period > 0 and step % eval_period == 0))
          do_save = is_last or do_eval or step % save_period == 0
          waits = is_last or do_save or step % log_period == 0  # the same steps on every process
          if waits:
            report(step)
          checkpoint_metrics = None
          if do_eval:
            scores = evaluate(state.trainable, frozen)
            writer.write_scalars(step, "validation", scores)
            progress.write(f"step {step}: validation {format_scores(scores)}")
            # Checkpoints rank by e.g. 'validation/loss' (the `best_metric` of `Checkpoints`).
            checkpoint_metrics = {f"validation/{name}": value for name, value in scores.items()}
          if do_save:
            checkpoints.save(state, position(step), checkpoint_metrics)
            last_good_step = step
          if not is_last and stop.should_stop(sync=waits):
            report(step)
            checkpoints.save(state, position(step))
            checkpoints.wait_until_finished()
            stop.finished()
            raise preemption.TrainingInterrupted(step, stop.stop_signal())
    finally:
      progress.close()
      checkpoints.wait_until_finished()
  return state, frozen


def _restore_or_init(checkpoints: Checkpoints, optimizer: optax.GradientTransformation, trainable: PyTree,
                     shardings: TrainState, input_position: Mapping[str, Any], num_train_steps: int,
                     optimizer_step: int = 0) -> tuple[TrainState, int | None]:
  """The newest intact checkpoint's state (newer damaged ones moved aside, with a warning each) or a fresh one.

  Every check that can refuse the run comes before anything is moved. Returns (state, restored step or None).
  """
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                jax.eval_shape(functools.partial(_init_state, optimizer), trainable), shardings)
  done = max(checkpoints.all_steps(), default=0)  # checked before restoring: cheap, and refuses early
  if done > num_train_steps:
    raise ValueError(f"{checkpoints.model_dir} already holds {done} steps (checkpoint_{done}), more than "
                     f"TRAIN_STEPS={num_train_steps}; pass --gin.TRAIN_STEPS={done} or more to continue, evaluate "
                     "that checkpoint with prompt_tuning_jax.eval, or use a new MODEL_DIR")
  state, saved_position, step, damaged = checkpoints.restore_latest_intact(abstract_state)
  if state is not None:
    _check_resumable(saved_position, input_position, checkpoints.model_dir, step)
  for bad_step, why in damaged:
    moved = checkpoints.move_aside(bad_step)
    say(f"train: warning: checkpoint_{bad_step} cannot be restored ({why}); moved it aside to {moved}")
  if state is None:
    state = jax.jit(functools.partial(_init_state, optimizer, optimizer_step=optimizer_step),
                    out_shardings=shardings, donate_argnums=0)(trainable)
    return state, None
  for initial in jax.tree.leaves(trainable):
    initial.delete()  # the checkpoint's values replace them; the caller may still hold references
  done = "all" if step == num_train_steps else f"{step} of {num_train_steps}"
  say(f"train: resuming from {checkpoints.model_dir}/checkpoint_{step} ({done} steps done)")
  return state, step


def _check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], model_dir: str, step: int) -> None:
  """A step-indexed pipeline resumes exactly only with the same task, batch size and seed."""
  for key, value in current.items():
    if key in saved and saved[key] != value:
      raise IncompatibleCheckpointError(f"{model_dir}/checkpoint_{step} was trained with {key}={saved[key]!r}, this run has "
                       f"{value!r}; exact resumption needs the original value: restore it or use a new MODEL_DIR")
