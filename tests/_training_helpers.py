"""Shared pieces of the training tests: a tiny prompted T5, a synthetic feature dataset, one-call training.

Run as a script it is one process of the two-process tests (see `test_training_multiprocess.py`):
  python tests/_training_helpers.py COORDINATOR PROCESS_ID MODEL_DIR OUT_FILE [SIGTERM_AT_STEP]
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from prompt_tuning_jax import prompts
from prompt_tuning_jax.model import Transformer, config_for_size
from prompt_tuning_jax.training import checkpointing, losses, optimizers, partitioning, preemption, trainer
from prompt_tuning_jax.training.input_pipeline import train_batches
from prompt_tuning_jax.training.metrics_writer import MetricsWriter

# Runs in one test session compile the same programs (the tiny model's steps); a session-wide compilation cache
# turns the repeats into cache hits.
_CACHE_DIR = tempfile.mkdtemp(prefix="prompt_tuning_jax_xla_cache_")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

PROMPT_REGEX = ".*/prompt/.*"
PROMPT_PATH = ("encoder", "prompt", "prompt", "prompt")
INPUT_LENGTH, TARGET_LENGTH = 8, 4
TARGET = (5, 9, 17, 1)  # every example's target: learnable through the prompt alone


def tiny_model(prompt_length: int | None = 16, dropout_rate: float = 0.0) -> Transformer:
  """The tiny T5 1.1 (vocab 128, embed 32), with a uniform-initialized prompt unless prompt_length is None."""
  factory = None
  if prompt_length is not None:
    factory = functools.partial(prompts.PrefixPrompt, length=prompt_length, init=prompts.uniform())
  return Transformer(config_for_size("tiny", dropout_rate=dropout_rate), prompt_factory=factory)


def init_params(model: Transformer, seed: int = 0) -> tuple[dict, dict]:
  """(unboxed params as numpy, logical axes) of `model`."""
  tokens = jnp.ones((1, INPUT_LENGTH), jnp.int32)
  targets = jnp.ones((1, TARGET_LENGTH), jnp.int32)
  init = functools.partial(model.init, enable_dropout=False)
  boxed = init(jax.random.PRNGKey(seed), tokens, targets, targets)["params"]  # eager: faster than compiling
  return jax.tree.map(np.asarray, nn.meta.unbox(boxed)), nn.get_partition_spec(boxed)


def feature_dataset(num_examples: int = 256, seed: int = 0) -> tf.data.Dataset:
  """Model features: random inputs [8] (ids 2..127), the constant target TARGET [4]."""
  rng = np.random.RandomState(seed)
  inputs = rng.randint(2, 128, size=(num_examples, INPUT_LENGTH)).astype(np.int32)
  targets = np.tile(np.asarray([TARGET], np.int32), (num_examples, 1))
  decoder_inputs = np.concatenate([np.zeros((num_examples, 1), np.int32), targets[:, :-1]], axis=1)
  return tf.data.Dataset.from_tensor_slices({
      "encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets,
      "decoder_loss_weights": (targets > 0).astype(np.int32)})


def train_tiny(model_dir: str, *, model: Transformer | None = None, steps: int = 6, mesh_shape=(1, 1),
               batch_size: int = 8, trainable_regex: str = PROMPT_REGEX, optimizer=None, save_period: int = 1000,
               keep: int | None = None, devices=None, log_period: int = 1, dropout_seed: int = 0,
               evaluate=None, eval_period: int = 0, best_metric: str | None = None,
               sigterm_at_step: int | None = None):
  """Trains the tiny model on `feature_dataset` with `trainer.train`; returns (state, frozen, initial params).

  `sigterm_at_step`: process 0 sends itself SIGTERM as it reads that step's batch (a preemption notice).
  """
  model = model or tiny_model()
  params, axes = init_params(model)
  if devices is None:
    devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = partitioning.create_mesh(mesh_shape=mesh_shape, devices=devices)
  shard_id, num_shards, host_batch_size = partitioning.data_shard(mesh, batch_size)
  data = feature_dataset().shard(num_shards, shard_id).repeat()

  def batches(start):
    for step, batch in enumerate(train_batches(data, host_batch_size, start), start + 1):
      if step == sigterm_at_step and jax.process_index() == 0:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch
  checkpoints = checkpointing.Checkpoints(model_dir, keep=keep, best_metric=best_metric, async_save=False)
  writer = MetricsWriter(model_dir, enabled=jax.process_index() == 0)
  try:
    state, frozen = trainer.train(
        model=model, params=params, param_axes=axes, trainable_regex=trainable_regex,
        optimizer=optimizer or optimizers.adafactor(), loss_config=losses.LossConfig(), mesh=mesh,
        rules=partitioning.standard_logical_axis_rules(),
        train_batches=batches, global_batch_size=batch_size,
        num_train_steps=steps, checkpoints=checkpoints, save_period=save_period, writer=writer,
        input_position={"task": "constant_target", "batch_size": batch_size}, evaluate=evaluate,
        eval_period=eval_period, log_period=log_period, dropout_seed=dropout_seed, show_progress=False)
  finally:
    writer.close()
    checkpoints.close()
  return state, frozen, params


def prompt_of(tree) -> np.ndarray:
  """The prompt [P, embed] of a (trainable or full) parameter tree, as numpy."""
  node = tree
  for key in PROMPT_PATH:
    node = node[key]
  return np.asarray(partitioning.fetch(node))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(command_of: Callable[[str, int], list[str]], timeout_s: float, cwd: str | None = None,
                      env_extra: Mapping[str, str] | None = None) -> None:
  """Runs `command_of(coordinator_address, process_index)` for processes 0 and 1 (2 CPU devices each, gloo on
  localhost) and fails with the log of any process that does not exit 0."""
  coordinator = f"127.0.0.1:{free_port()}"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "CUDA_VISIBLE_DEVICES": "",
         "JAX_PLATFORMS": "cpu", **(env_extra or {})}
  workers = [subprocess.Popen(command_of(coordinator, i), cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for i in range(2)]
  try:
    logs = [w.communicate(timeout=timeout_s)[0].decode(errors="replace") for w in workers]
  finally:
    for w in workers:
      if w.poll() is None:
        w.kill()
  for i, w in enumerate(workers):
    assert w.returncode == 0, f"process {i} failed ({' '.join(command_of(coordinator, i)[:3])}):\n{logs[i][-3000:]}"


def _worker(coordinator: str, process_id: int, model_dir: str, out_file: str,
            sigterm_at_step: int | None = None) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  partitioning.initialize_distributed(coordinator, 2, process_id)
  assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
  if sigterm_at_step is None:
    state, _, _ = train_tiny(model_dir, steps=4, mesh_shape=(4, 1), save_period=2)
    np.save(out_file, prompt_of(state.trainable))
    return
  try:
    train_tiny(model_dir, steps=20, mesh_shape=(4, 1), log_period=4, sigterm_at_step=sigterm_at_step)
  except preemption.TrainingInterrupted as e:
    np.save(out_file, np.asarray([e.step, e.signum]))


if __name__ == "__main__":
  _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], *(int(a) for a in sys.argv[5:]))
