"""The runs the CLIs start, built from gin: prompt tuning / fine-tuning / pretraining (`train`) and `evaluate`.

These are the gin edge: `gin_configs/runs/*.gin` bind their arguments (with dynamic registration, as
`runs.train.batch_size = %BATCH_SIZE`), and they turn them into the plain arguments of `trainer.train` and
`evaluation.make_evaluate`. Bad input is rejected here, before anything is written to MODEL_DIR.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
import optax
import seqio
import tensorflow as tf
from flax import traverse_util
from jax.sharding import Mesh

from prompt_tuning_jax import checkpoints as checkpoint_io
from prompt_tuning_jax import prompts
from prompt_tuning_jax.data import pipeline, tasks
from prompt_tuning_jax.training import (
    checkpointing,
    evaluation,
    input_pipeline,
    losses,
    partitioning,
    preemption,
    run_lock,
    train_state,
    trainer,
)
from prompt_tuning_jax.training.errors import UsageError, check_int
from prompt_tuning_jax.training.metrics_writer import EVAL_METRICS_FILE, MetricsWriter

PyTree = Any
DATA_SHARDINGS = ("source", "global")  # runs.train's data_sharding
CONFIG_FILE = "config.gin"  # the latest started run's; an earlier run's different one is kept as config_until_N.gin
EVAL_CONFIG_FILE = "eval_config.gin"  # not config.gin: EVAL_OUTPUT_DIR may be the training run's MODEL_DIR


def import_task_module(mixture_or_task_module: str | None) -> None:
  """Imports MIXTURE_OR_TASK_MODULE, which registers the tasks by name."""
  if not mixture_or_task_module:
    return
  try:
    importlib.import_module(mixture_or_task_module)
  except ModuleNotFoundError as e:
    raise ValueError(f"MIXTURE_OR_TASK_MODULE {mixture_or_task_module!r} cannot be imported ({e}); set it to the "
                     "module that registers your tasks, e.g. 'prompt_tuning_jax.data.tasks'") from None


def task_vocabulary(mixture_or_task_name: str, mixture_or_task_module: str | None = None) -> seqio.Vocabulary:
  """The targets vocabulary of a registered task (gin: `VOCABULARY = @runs.task_vocabulary()`)."""
  import_task_module(mixture_or_task_module)
  return tasks.get_mixture_or_task(mixture_or_task_name).output_features["targets"].vocabulary


def task_class_labels(mixture_or_task_name: str, mixture_or_task_module: str | None = None) -> list[str]:
  """The class labels of a classification task (gin: `CLASS_LABELS = @runs.task_class_labels()`)."""
  import_task_module(mixture_or_task_module)
  labels = tasks.get_class_labels(mixture_or_task_name)
  if not labels:
    raise ValueError(f"task {mixture_or_task_name} has no class labels (it generates free text); set "
                     "CLASS_LABELS explicitly or choose another prompt initializer")
  return labels


def _check_regex(regex: str | None, what: str) -> None:
  if regex is None:
    return
  try:
    re.compile(regex)
  except re.error as e:
    raise ValueError(f"{what} {regex!r} is not a valid regular expression ({e}); fix it") from None


def check_writable_dir(path: str, what: str = "MODEL_DIR") -> str:
  """Creates `path` (local, or a gs:// bucket path) if needed and proves it writable; returns its absolute form."""
  if not path:
    raise ValueError(f"{what} is empty; pass --gin.{what}=\"'/path/to/dir'\"")
  path = checkpointing.absolute_dir(os.path.expanduser(path))
  probe = os.path.join(path, f".write_test_{os.getpid()}_{jax.process_index()}")
  try:
    tf.io.gfile.makedirs(path)
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("probe")  # gfile creates the file at the first write only
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    reason = e.message if isinstance(e, tf.errors.OpError) else e.strerror
    raise ValueError(f"{what} {path} is not writable ({reason}); pass a directory you can write to") from None
  return path


def _write_text(path: str, text: str) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text)


def _dummy_inputs(task_feature_lengths: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
  # Host values: every process of a multi-host job holds the same ones, as a jit over the whole mesh needs.
  return (np.ones((1, task_feature_lengths["inputs"]), np.int32),
          np.ones((1, task_feature_lengths["targets"]), np.int32))


def abstract_params(model: nn.Module, task_feature_lengths: Mapping[str, int]) -> tuple[PyTree, PyTree]:
  """(ShapeDtypeStruct tree, logical PartitionSpec tree) of the model's parameters, without allocating them."""
  inputs, targets = _dummy_inputs(task_feature_lengths)
  init = functools.partial(model.init, enable_dropout=False)
  boxed = jax.eval_shape(init, jax.random.PRNGKey(0), inputs, targets, targets)["params"]
  return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


def _subtree(tree: PyTree, like: PyTree) -> PyTree:
  """The leaves of `tree` at the paths of `like`'s leaves."""
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict({path: flat[path] for path in traverse_util.flatten_dict(like)})


def initial_params(model: nn.Module, task_feature_lengths: Mapping[str, int], initial_checkpoint_path: str | None,
                   initialize_regex: str | None, seed: int, *, mesh: Mesh | None = None,
                   rules: partitioning.LogicalRules | None = None) -> PyTree:
  """The complete parameter tree before training: INITIAL_CHECKPOINT_PATH's arrays plus freshly initialized ones.

  With a `mesh`, every parameter is built straight into its logical sharding, so no device ever holds the whole
  model (T5 1.1 xxl is 44 GB in float32): each process copies only its devices' shards of the checkpoint's host
  arrays, and the initializers run under jit with the mesh shardings as out_shardings.

  Args:
    model: the `Transformer`.
    task_feature_lengths: input/target lengths for the tracing calls.
    initial_checkpoint_path: a T5X (legacy or orbax) or Hugging Face checkpoint, or None for a random model.
    initialize_regex: parameters whose path fully matches it come from their initializers, not the checkpoint
      (the prompt); the initializers see the restored token embedding.
    seed: seed of the initializers.
    mesh: the device mesh the parameters go to, or None for jax's default device (small models, tools).
    rules: logical axis -> mesh axis (default `partitioning.standard_logical_axis_rules()`); only with `mesh`.

  Returns:
    The unboxed parameter tree: global arrays with the logical shardings on `mesh`, or arrays on one device.
    The values do not depend on the mesh.
  """
  rng = jax.random.PRNGKey(seed)
  inputs, targets = _dummy_inputs(task_feature_lengths)
  expected, param_axes = abstract_params(model, task_feature_lengths)
  shardings = None
  if mesh is not None:
    shardings = partitioning.logical_shardings(param_axes, mesh,
                                               rules or partitioning.standard_logical_axis_rules())
  if initial_checkpoint_path is None:
    init = lambda rng: nn.meta.unbox(model.init(rng, inputs, targets, targets, enable_dropout=False)["params"])
    return jax.jit(init, **({} if shardings is None else {"out_shardings": shardings}))(rng)
  if "://" not in initial_checkpoint_path and not os.path.exists(initial_checkpoint_path):
    raise FileNotFoundError(f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} does not exist; pass a T5X "
                            "checkpoint_N or Hugging Face T5 1.1 directory (or None for a random model)")
  loaded, inferred = checkpoint_io.load_params(initial_checkpoint_path)
  checkpoint_io.check_config(model.config, inferred, initial_checkpoint_path)
  frozen = checkpoint_io.merge_frozen(expected, loaded, initial_checkpoint_path, skip_regex=initialize_regex)
  del loaded
  if shardings is not None:
    frozen = partitioning.put_global(frozen, _subtree(shardings, frozen))
  # Donated on the mesh: the restored arrays become the result's, not copied beside it.
  return prompts.init_missing_params(model, frozen, rng, inputs.shape[1], targets.shape[1],
                                     out_shardings=shardings, donate_params=shardings is not None)


def _check_lengths(model: nn.Module, expected_params: PyTree, task_feature_lengths: Mapping[str, int],
                   vocabulary: seqio.Vocabulary, max_encoder_length: int | None, task: str) -> None:
  """The task must fit the model: vocabulary ids below vocab_size, prompt + inputs within the allowed length."""
  if vocabulary.vocab_size > model.config.vocab_size:
    raise ValueError(f"task {task}'s vocabulary has {vocabulary.vocab_size} ids but the model's vocab_size is "
                     f"{model.config.vocab_size}; use a model (T5Config.vocab_size) at least that large")
  flat = traverse_util.flatten_dict(expected_params, sep="/")
  prompt_length = sum(leaf.shape[0] for path, leaf in flat.items() if path.endswith("prompt/prompt/prompt"))
  encoder_length = prompt_length + task_feature_lengths["inputs"]
  if max_encoder_length is not None and encoder_length > max_encoder_length:
    raise ValueError(f"PROMPT_LENGTH {prompt_length} + TASK_FEATURE_LENGTHS['inputs'] "
                     f"{task_feature_lengths['inputs']} = {encoder_length} encoder positions, more than "
                     f"MAX_ENCODER_LENGTH {max_encoder_length}; shorten the inputs or the prompt")


def initial_checkpoint_step(initial_checkpoint_path: str | None) -> int:
  """The step INITIAL_CHECKPOINT_PATH was saved at (0 for None, a Hugging Face directory or a missing path,
  which `initial_params` reports)."""
  if initial_checkpoint_path is None:
    return 0
  if "://" not in initial_checkpoint_path and not os.path.exists(initial_checkpoint_path):
    return 0
  return checkpoint_io.checkpoint_step(initial_checkpoint_path)


def run_train_steps(train_steps: int, initial_step: int, absolute_train_steps: bool) -> int:
  """This run's number of steps: TRAIN_STEPS, or with `absolute_train_steps` (t5x's meaning) TRAIN_STEPS minus
  the initial checkpoint's step."""
  if not absolute_train_steps:
    return train_steps
  if train_steps <= initial_step:
    raise ValueError(f"TRAIN_STEPS {train_steps} is t5x's global step to stop at (runs.train.absolute_train_steps="
                     f"True), but INITIAL_CHECKPOINT_PATH is already at step {initial_step}; set TRAIN_STEPS to "
                     f"{initial_step} plus the steps to train")
  return train_steps - initial_step


def _input_position(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int,
                     seed: int) -> dict[str, Any]:
  return {"mixture_or_task_name": mixture_or_task_name, "task_feature_lengths": dict(task_feature_lengths),
          "batch_size": batch_size, "seed": seed}


def train(*, model: nn.Module, model_dir: str, mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], train_steps: int, batch_size: int,
          optimizer: optax.GradientTransformation, trainable_regex: str,
          mixture_or_task_module: str | None = None, initial_checkpoint_path: str | None = None,
          initialize_regex: str | None = None, loss_config: losses.LossConfig = losses.LossConfig(),
          train_split: str = "train", seed: int = 0, save_period: int = 1000, keep_checkpoints: int | None = None,
          eval_period: int = 1000, eval_split: str | None = "validation", eval_num_examples: int | None = None,
          decode_metrics: bool = True, decoding: evaluation.DecodingConfig = evaluation.DecodingConfig(),
          rank_classification: bool = False, best_metric: str | None = "validation/loss", best_mode: str = "min",
          export_peft: bool = False, num_partitions: int = 1, mesh_shape: Sequence[int] | None = None,
          logical_axis_rules: partitioning.LogicalRules | None = None, max_encoder_length: int | None = None,
          log_period: int = 10, async_checkpointing: bool = False, optimizer_step_from_checkpoint: bool = True,
          absolute_train_steps: bool = False,
          stop_timeout_s: float = preemption.DEFAULT_TIMEOUT_S,
          frozen_param_dtype: str | None = None, data_sharding: str = "source") -> trainer.TrainState:
  """Trains the parameters `trainable_regex` selects on a seqio task; resumes from MODEL_DIR's latest checkpoint.

  Args:
    model: MODEL, the `Transformer` (with a prompt factory for prompt tuning).
    model_dir: MODEL_DIR: checkpoints, numpy_checkpoints/, metrics.jsonl, TensorBoard events, config.gin.
    mixture_or_task_name: MIXTURE_OR_TASK_NAME.
    task_feature_lengths: TASK_FEATURE_LENGTHS, e.g. {'inputs': 512, 'targets': 8}.
    train_steps: TRAIN_STEPS, optimizer steps in total (counted from this run's step 0, not the pretraining's).
    batch_size: BATCH_SIZE, examples per step over all processes.
    optimizer: e.g. `optimizers.adafactor(learning_rate=%LEARNING_RATE)`; only trainable parameters see it.
    trainable_regex: PROMPT_REGEX; '.*' trains everything (fine-tuning, pretraining).
    mixture_or_task_module: MIXTURE_OR_TASK_MODULE, imported to register the task.
    initial_checkpoint_path: INITIAL_CHECKPOINT_PATH: the pretrained model (T5X legacy/orbax or Hugging Face),
      or None for a randomly initialized one (pretraining, tests).
    initialize_regex: parameters taken from their initializers rather than INITIAL_CHECKPOINT_PATH (the prompt).
    loss_config: z-loss, label smoothing, loss normalization.
    train_split: the split to train on.
    seed: seed of the initializers, the data order and dropout.
    save_period: SAVE_PERIOD; the last step and evaluated steps are saved too.
    keep_checkpoints: how many recent checkpoints to keep (None: all); the best by `best_metric` is kept too.
    eval_period: EVAL_PERIOD (0: evaluate only at the end).
    eval_split: the held-out split, or None for no evaluation.
    eval_num_examples: evaluate on the split's first examples only (None: all).
    decode_metrics: also decode the eval split and compute the task's metrics.
    decoding: how evaluation decodes (`evaluation.DecodingConfig`: greedy, or t5x's 1-beam search, alpha 0.6).
    rank_classification: also report 'rank_classification/<task>/<metric>' (class labels scored by likelihood).
    best_metric: the checkpoint metric kept at its best, e.g. 'validation/loss' or
      'validation/<task>/accuracy'.
    best_mode: 'min' or 'max'.
    export_peft: also export every saved prompt as a PEFT adapter under MODEL_DIR/peft_adapters/.
    num_partitions: model-parallel size (the `model` mesh axis); the rest of the devices split the batch.
    mesh_shape: explicit (data, model) mesh shape instead of `num_partitions`.
    logical_axis_rules: logical axis -> mesh axis; default `partitioning.standard_logical_axis_rules()`.
    max_encoder_length: MAX_ENCODER_LENGTH, the most encoder positions (prompt + inputs) allowed, or None.
    log_period: steps between train-metric reports.
    async_checkpointing: write checkpoints in the background (off: a prompt's state is kilobytes; for full
      fine-tuning of large models it hides the write time).
    optimizer_step_from_checkpoint: start the optimizer's step count at INITIAL_CHECKPOINT_PATH's step, as t5x
      does (T5X checkpoints store it; Hugging Face ones and a random model start at 0), so Adafactor's
      second-moment decay and learning-rate schedules see the global step; False: start at 0.
    absolute_train_steps: read TRAIN_STEPS as t5x does, as the global step to stop at (counted from step 0 of
      the initial checkpoint's training, e.g. 1,130,000 for 30k steps from a 1.1M checkpoint); False (default):
      TRAIN_STEPS is this run's number of steps.
    stop_timeout_s: after SIGTERM/SIGINT, the most seconds to wait for the final save before exiting without it.
    frozen_param_dtype: FROZEN_PARAM_DTYPE: 'bfloat16' keeps the frozen model in bfloat16 on the devices (half
      the memory and bandwidth; use it with bfloat16 activations on GPUs and TPUs); the trainable parameters and
      their optimizer state stay float32. None keeps float32.
    data_sharding: how the processes of a multi-host job split the train split. 'source' (t5x's): each reads
      its seqio shard (`ShardInfo`) and shuffles it on its own, so the data order depends on the number of
      processes. 'global': each reads the whole split in one shuffled order and feeds its rows of every global
      batch, so every step sees the batch a single process would, whatever the topology (and a run resumed on
      another number of hosts continues the same order); each process then reads all the data. The same on one
      process.

  Returns:
    The final train state.
  """
  arguments = dict(locals())  # exactly train's parameters, for _train_in
  check_run_arguments(train_steps=train_steps, batch_size=batch_size, save_period=save_period,
                      eval_period=eval_period, eval_num_examples=eval_num_examples, log_period=log_period)
  train_state.frozen_dtype_or_none(frozen_param_dtype)
  if data_sharding not in DATA_SHARDINGS:
    choices = ", ".join(map(repr, DATA_SHARDINGS))
    raise UsageError(f"runs.train.data_sharding={data_sharding!r} is not one of {choices}: 'source' reads each "
                     "process's seqio shard (t5x), 'global' the whole split on every process")
  import_task_module(mixture_or_task_module)
  provider = tasks.get_mixture_or_task(mixture_or_task_name)
  task_feature_lengths = pipeline.validate_task_feature_lengths(task_feature_lengths)
  initial_step = initial_checkpoint_step(initial_checkpoint_path)
  train_steps = run_train_steps(train_steps, initial_step, absolute_train_steps)
  del arguments["absolute_train_steps"]  # applied: train_steps is this run's number of steps now
  arguments.update(task_feature_lengths=task_feature_lengths, provider=provider, train_steps=train_steps,
                   initial_step=initial_step)
  with _model_dir_for_one_run(arguments.pop("model_dir")) as checked_dir:
    return _train_in(checked_dir, **arguments)


def check_run_arguments(*, train_steps: Any, batch_size: Any, save_period: Any, eval_period: Any,
                        eval_num_examples: Any, log_period: Any) -> None:
  """Types and ranges of `train`'s counts, before anything is built (errors.UsageError: exit status 2)."""
  check_int("TRAIN_STEPS", train_steps, minimum=1)
  check_int("BATCH_SIZE", batch_size, minimum=1)
  check_int("SAVE_PERIOD", save_period, minimum=1)
  check_int("EVAL_PERIOD", eval_period, minimum=0)
  check_int("runs.train.eval_num_examples", eval_num_examples, minimum=1, allow_none=True)
  check_int("runs.train.log_period", log_period, minimum=1)


@contextlib.contextmanager
def _model_dir_for_one_run(model_dir: str):
  """MODEL_DIR checked writable and locked for this run; a MODEL_DIR this call created is removed again if the
  run is refused before writing anything into it."""
  path = checkpointing.absolute_dir(os.path.expanduser(model_dir)) if model_dir else model_dir
  existed = bool(path) and tf.io.gfile.isdir(path)
  path = check_writable_dir(model_dir)
  try:
    with run_lock.held(path, warn=lambda message: trainer.say(f"train: warning: {message}")):
      yield path
  finally:
    if not existed and jax.process_index() == 0 and tf.io.gfile.isdir(path) and not tf.io.gfile.listdir(path):
      tf.io.gfile.rmtree(path)


def _keep_previous_config(model_dir: str, config_text: str, start_step: int) -> None:
  """Renames the previous run's config.gin to config_until_<start_step>.gin if it differs from this run's."""
  path = os.path.join(model_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path, "r") as f:
    if f.read() == config_text:
      return
  kept, suffix = os.path.join(model_dir, f"config_until_{start_step}.gin"), 1
  while tf.io.gfile.exists(kept):
    suffix += 1
    kept = os.path.join(model_dir, f"config_until_{start_step}_{suffix}.gin")
  tf.io.gfile.rename(path, kept)


def _train_in(model_dir: str, *, model: nn.Module, mixture_or_task_name: str,
              task_feature_lengths: Mapping[str, int], train_steps: int, batch_size: int,
              optimizer: optax.GradientTransformation, trainable_regex: str, mixture_or_task_module: str | None,
              initial_checkpoint_path: str | None, initialize_regex: str | None, loss_config: losses.LossConfig,
              train_split: str, seed: int, save_period: int, keep_checkpoints: int | None, eval_period: int,
              eval_split: str | None, eval_num_examples: int | None, decode_metrics: bool,
              decoding: evaluation.DecodingConfig, rank_classification: bool,
              best_metric: str | None, best_mode: str, export_peft: bool, num_partitions: int,
              mesh_shape: Sequence[int] | None, logical_axis_rules: partitioning.LogicalRules | None,
              max_encoder_length: int | None, log_period: int, async_checkpointing: bool,
              optimizer_step_from_checkpoint: bool, stop_timeout_s: float, frozen_param_dtype: str | None,
              data_sharding: str, provider: Any, initial_step: int) -> trainer.TrainState:
  """`train` in a checked, locked MODEL_DIR."""
  started = time.perf_counter()
  expected, param_axes = abstract_params(model, task_feature_lengths)
  _check_regex(trainable_regex, "PROMPT_REGEX (trainable_regex)")
  _check_regex(initialize_regex, "initialize_regex")
  train_state.split_params(expected, trainable_regex)  # fails now, not after loading, if nothing would train
  _check_lengths(model, expected, task_feature_lengths, provider.output_features["targets"].vocabulary,
                 max_encoder_length, mixture_or_task_name)
  mesh = partitioning.create_mesh(num_partitions, mesh_shape)
  shard_id, num_shards, host_batch_size = partitioning.data_shard(mesh, batch_size)
  if data_sharding == "global":  # every process reads everything and keeps its rows of each global batch
    shard_id, num_shards = 0, 1
  rules = logical_axis_rules or partitioning.standard_logical_axis_rules()
  train_dataset = lambda: pipeline.get_dataset(mixture_or_task_name, task_feature_lengths, train_split,
                                               shuffle=True, seed=seed, shard_id=shard_id, num_shards=num_shards,
                                               num_epochs=None)
  description = f"split '{train_split}' of {mixture_or_task_name}"
  # Checked on a copy: reading a dataset advances its reshuffling, and the one trained on must give t5x's
  # (a plain seqio pipeline's) batches for this seed.
  input_pipeline.check_not_empty(train_dataset(), batch_size if data_sharding == "global" else host_batch_size,
                                 description)
  train_data = train_dataset()
  params = initial_params(model, task_feature_lengths, initial_checkpoint_path, initialize_regex, seed, mesh=mesh,
                          rules=rules)
  params = train_state.cast_frozen(params, trainable_regex, frozen_param_dtype)
  if data_sharding == "global":
    rows = partitioning.host_batch_rows(mesh, batch_size)
    train_batches = lambda start_step: input_pipeline.global_train_batches(train_data, batch_size, rows, start_step,
                                                                           description)
  else:
    train_batches = lambda start_step: input_pipeline.train_batches(train_data, host_batch_size, start_step,
                                                                    description)
  evaluate = None
  if eval_split is not None:
    evaluate = evaluation.make_evaluate(
        model=model, loss_config=loss_config, mesh=mesh, global_batch_size=batch_size,
        mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths, split=eval_split,
        num_examples=eval_num_examples, decode_metrics=decode_metrics, decoding_config=decoding,
        rank_classification=rank_classification)
  peft = None
  if export_peft:
    peft = {"num_layers": model.config.num_encoder_layers, "num_attention_heads": model.config.num_heads,
            "base_model_name_or_path": initial_checkpoint_path}
  checkpoints = checkpointing.Checkpoints(model_dir, keep=keep_checkpoints,
                                         best_metric=best_metric if evaluate else None, best_mode=best_mode,
                                         export_peft=peft, async_save=async_checkpointing)
  chief = jax.process_index() == 0
  writer = MetricsWriter(model_dir, enabled=chief)
  config_text = gin.operative_config_str()
  first_step = []

  def on_start(start_step: int) -> None:
    """The run is accepted: record its config (keeping an earlier run's different one)."""
    first_step.append(start_step)
    if chief and start_step < train_steps:
      _keep_previous_config(model_dir, config_text, start_step)
      _write_text(os.path.join(model_dir, CONFIG_FILE), config_text)
      writer.write_text(start_step, "train", "config", config_text)

  try:
    state, _ = trainer.train(
        model=model, params=params, param_axes=param_axes, trainable_regex=trainable_regex, optimizer=optimizer,
        loss_config=loss_config, mesh=mesh, rules=rules, train_batches=train_batches, global_batch_size=batch_size,
        num_train_steps=train_steps, checkpoints=checkpoints, save_period=save_period, writer=writer,
        input_position=_input_position(mixture_or_task_name, task_feature_lengths, batch_size, seed),
        evaluate=evaluate, eval_period=eval_period, log_period=log_period, dropout_seed=seed, on_start=on_start,
        stop_timeout_s=stop_timeout_s, optimizer_step=initial_step if optimizer_step_from_checkpoint else 0)
  finally:
    writer.close()
    checkpoints.close()
  if first_step:  # the run was accepted and got to its loop
    trainer.say(_summary(model_dir, first_step[0], train_steps, time.perf_counter() - started, checkpoints,
                         evaluate is not None, export_peft))
  return state


def _summary(model_dir: str, start_step: int, train_steps: int, seconds: float,
             checkpoints: checkpointing.Checkpoints, evaluated: bool, export_peft: bool) -> str:
  """The closing lines of a training run: what ran and where its results are."""
  if start_step >= train_steps:
    ran = f"nothing to do: all {train_steps} steps were already done"
  else:
    ran = f"trained steps {start_step + 1}-{train_steps} of {train_steps} in {seconds:.0f} s"
  steps = checkpoints.all_steps()
  shown = ",".join(map(str, steps)) if len(steps) <= 6 else f"{steps[0]},...,{steps[-1]} ({len(steps)} kept)"
  lines = [f"train: {ran}; checkpoints: {model_dir}/checkpoint_{{{shown}}}"]
  best = checkpoints.best_step() if evaluated else None
  if best is not None:
    lines.append(f"train: best by {checkpoints.best_metric}: checkpoint_{best}")
  exports = [f"{model_dir}/numpy_checkpoints/checkpoint_N/encoder.prompt.prompt.prompt"]
  if export_peft:
    exports.append(f"{model_dir}/peft_adapters/checkpoint_N/")
  if tf.io.gfile.isdir(os.path.join(model_dir, "numpy_checkpoints")):
    lines.append(f"train: prompt exports: {' and '.join(exports)}")
  return "\n".join(lines)


def resolve_checkpoint(checkpoint_path: str) -> tuple[str, int]:
  """A `checkpoint_N` directory, or a MODEL_DIR whose latest `checkpoint_N` is meant -> (directory, N)."""
  path = checkpointing.absolute_dir(checkpoint_path).rstrip("/")
  name = os.path.basename(path)
  is_dir = tf.io.gfile.isdir(path)
  if (match := re.fullmatch(r"checkpoint_(\d+)", name)) and is_dir:
    return path, int(match.group(1))
  # gfile lists a bucket's subdirectories with a trailing '/'.
  steps = sorted(int(m.group(1)) for entry in (tf.io.gfile.listdir(path) if is_dir else [])
                 if (m := re.fullmatch(r"checkpoint_(\d+)", entry.rstrip("/"))))
  if not steps:
    raise FileNotFoundError(f"CHECKPOINT_PATH {checkpoint_path} is neither a checkpoint_N directory nor a "
                            "MODEL_DIR holding one; pass the directory a training run saved")
  return os.path.join(path, f"checkpoint_{steps[-1]}"), steps[-1]


def overlay_trained(params: PyTree, trained: PyTree, source: str) -> PyTree:
  """Replaces parameters of `params` (arrays or ShapeDtypeStructs) by the trained ones (a prompt, a whole model)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  for path, value in traverse_util.flatten_dict(trained, sep="/").items():
    if path not in flat:
      raise ValueError(f"{source} holds {path}, which the model does not have; evaluate it with the model (and "
                       "prompt gin files) it was trained with")
    if tuple(value.shape) != tuple(flat[path].shape):
      raise ValueError(f"{source} holds {path} of shape {tuple(value.shape)}, the model expects "
                       f"{tuple(flat[path].shape)}; set the PROMPT_LENGTH and model size it was trained with")
    flat[path] = value
  return traverse_util.unflatten_dict(flat, sep="/")


def evaluate(*, model: nn.Module, output_dir: str, mixture_or_task_name: str,
             task_feature_lengths: Mapping[str, int], batch_size: int, checkpoint_path: str | None = None,
             mixture_or_task_module: str | None = None, initial_checkpoint_path: str | None = None,
             initialize_regex: str | None = None, loss_config: losses.LossConfig = losses.LossConfig(),
             split: str = "validation", num_examples: int | None = None, decode_metrics: bool = True,
             decoding: evaluation.DecodingConfig = evaluation.DecodingConfig(), rank_classification: bool = False,
             num_partitions: int = 1, mesh_shape: Sequence[int] | None = None,
             logical_axis_rules: partitioning.LogicalRules | None = None, seed: int = 0) -> dict[str, float]:
  """Evaluates a trained prompt (or model) on a split; writes EVAL_OUTPUT_DIR/eval_metrics.jsonl, TensorBoard
  events in EVAL_OUTPUT_DIR/eval_<split>/ and eval_config.gin.

  Args:
    model: MODEL.
    output_dir: EVAL_OUTPUT_DIR.
    mixture_or_task_name, task_feature_lengths, mixture_or_task_module: the task, as in `train`.
    batch_size: examples per eval batch over all processes.
    checkpoint_path: CHECKPOINT_PATH: a training run's `checkpoint_N` (or its MODEL_DIR, for the latest); its
      trained parameters replace the initial ones. None evaluates the initial parameters (e.g. a prompt from
      PROMPT_FILE via gin_configs/prompts/from_file.gin).
    initial_checkpoint_path, initialize_regex: the frozen model, as in `train`.
    loss_config: as in training.
    split: the split to evaluate.
    num_examples: only the split's first examples (None: all).
    decode_metrics: also decode and compute the task's metrics.
    decoding: DECODE_METHOD etc. (`evaluation.DecodingConfig`): greedy, or t5x's 1-beam search with alpha 0.6.
    rank_classification: RANK_CLASSIFICATION: also report 'rank_classification/<task>/<metric>', each task's
      class labels scored by log-likelihood.
    num_partitions, mesh_shape, logical_axis_rules: the mesh, as in `train`.
    seed: seed of the initializers of parameters not read from a checkpoint.

  Returns:
    {metric: value}; see `evaluation.make_evaluate`.
  """
  check_int("BATCH_SIZE", batch_size, minimum=1)
  check_int("runs.evaluate.num_examples", num_examples, minimum=1, allow_none=True)
  import_task_module(mixture_or_task_module)
  tasks.get_mixture_or_task(mixture_or_task_name)
  task_feature_lengths = pipeline.validate_task_feature_lengths(task_feature_lengths)
  output_dir = check_writable_dir(output_dir, "EVAL_OUTPUT_DIR")
  expected, param_axes = abstract_params(model, task_feature_lengths)
  _check_regex(initialize_regex, "initialize_regex")
  step, trained = 0, {}
  if checkpoint_path is not None:
    directory, step = resolve_checkpoint(checkpoint_path)
    trained = checkpoint_io.load_t5x_orbax(directory)
    overlay_trained(expected, trained, directory)  # checks shapes before any initialization work
  mesh = partitioning.create_mesh(num_partitions, mesh_shape)
  rules = logical_axis_rules or partitioning.standard_logical_axis_rules()
  params = overlay_trained(initial_params(model, task_feature_lengths, initial_checkpoint_path, initialize_regex,
                                          seed, mesh=mesh, rules=rules), trained, checkpoint_path)
  evaluate_fn = evaluation.make_evaluate(model=model, loss_config=loss_config, mesh=mesh,
                                         global_batch_size=batch_size, mixture_or_task_name=mixture_or_task_name,
                                         task_feature_lengths=task_feature_lengths, split=split,
                                         num_examples=num_examples, decode_metrics=decode_metrics,
                                         decoding_config=decoding, rank_classification=rank_classification)
  with partitioning.mesh_context(mesh, rules):
    # Places the trained arrays from CHECKPOINT_PATH; the initial ones are already on the mesh.
    params = partitioning.put_global(params, partitioning.logical_shardings(param_axes, mesh, rules))
    metrics = evaluate_fn({}, params)
  # Not the training run's metrics.jsonl or validation/ events, even when EVAL_OUTPUT_DIR is its MODEL_DIR.
  writer = MetricsWriter(output_dir, enabled=jax.process_index() == 0, metrics_file=EVAL_METRICS_FILE,
                         summary_prefix="eval_")
  try:
    writer.write_scalars(step, split, metrics)
    if jax.process_index() == 0:
      _write_text(os.path.join(output_dir, EVAL_CONFIG_FILE), gin.operative_config_str())
  finally:
    writer.close()
  return metrics
