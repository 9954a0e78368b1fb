"""Evaluation on a held-out split: teacher-forced loss and token accuracy, and the tasks' metrics on decoded text.

The split is read whole by every process, in global batches (see `input_pipeline.eval_global_batches`); the
decoded predictions are gathered on every process, and the metrics (computed alike everywhere) are written by
process 0. Datasets are built once and cached in memory, so each evaluation only runs the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.sharding import Mesh

from prompt_tuning_jax.data import pipeline
from prompt_tuning_jax.inference.decoding import greedy_decode
from prompt_tuning_jax.training import input_pipeline, losses, partitioning, steps, train_state

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DecodedTask:
  """One task scored on decoded predictions: its examples (for targets and postprocessing) and model inputs."""

  task: seqio.Task
  examples: Sequence[Mapping[str, Any]]  # numpy dicts from pipeline.get_task_dataset, in order
  features: tf.data.Dataset  # model features of the same examples, same order, cached


def teacher_forced_metrics(eval_step: Callable[..., dict[str, jax.Array]], trainable: PyTree, frozen: PyTree,
                           dataset: tf.data.Dataset, global_batch_size: int, mesh: Mesh,
                           description: str) -> dict[str, float]:
  """Per-token loss, z-loss and token accuracy of the model on every example of `dataset`."""
  totals: dict[str, float] = {}
  for batch, _ in input_pipeline.eval_global_batches(dataset, global_batch_size, mesh, description):
    for name, value in partitioning.fetch(eval_step(trainable, frozen, batch)).items():
      totals[name] = totals.get(name, 0.0) + float(value)
  weight_sum = max(totals["weight_sum"], 1.0)
  return {"loss": totals["loss"] / weight_sum, "z_loss": totals["z_loss"] / weight_sum,
          "token_accuracy": totals["correct"] / weight_sum, "num_examples": totals["num_examples"]}


def decode_all(model: nn.Module, params: PyTree, dataset: tf.data.Dataset, global_batch_size: int, mesh: Mesh,
               max_decode_length: int, eos_id: int, description: str) -> list[np.ndarray]:
  """Greedy predictions [max_decode_length] (int32, EOS then zeros) for every example of `dataset`, in order."""
  predictions: list[np.ndarray] = []
  for batch, real in input_pipeline.eval_global_batches(dataset, global_batch_size, mesh, description):
    tokens = greedy_decode(model, params, batch["encoder_input_tokens"], max_decode_length, eos_id)
    predictions.extend(partitioning.fetch(tokens)[:real])
  return predictions


def make_evaluate(*, model: nn.Module, loss_config: losses.LossConfig, mesh: Mesh, global_batch_size: int,
                  mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str = "validation",
                  num_examples: int | None = None,
                  decode_metrics: bool = True) -> Callable[[PyTree, PyTree], dict[str, float]]:
  """Builds `evaluate(trainable, frozen) -> {metric: value}` for a task or mixture's `split`.

  Metrics: 'loss', 'z_loss', 'token_accuracy', 'num_examples' (teacher-forced, per target token), and for each
  task with metrics '<task>/<metric>' from greedy decoding (e.g. 'synthetic_reverse/sequence_accuracy').

  Args:
    model: the `Transformer`.
    loss_config: as in training (the eval loss is reported per target token whatever the normalization).
    mesh: the device mesh (call `evaluate` inside `partitioning.mesh_context`).
    global_batch_size: examples per eval batch over all processes.
    mixture_or_task_name: MIXTURE_OR_TASK_NAME (its module must be imported).
    task_feature_lengths: TASK_FEATURE_LENGTHS; 'targets' is also the decode length.
    split: the held-out split.
    num_examples: evaluate on the first `num_examples` of each dataset (None: all).
    decode_metrics: also decode and score with the tasks' metrics.
  """
  features = pipeline.get_dataset(mixture_or_task_name, task_feature_lengths, split, shuffle=False, seed=None,
                                  num_epochs=1)
  if num_examples is not None:
    features = features.take(num_examples)
  description = f"split '{split}' of {mixture_or_task_name}"
  input_pipeline.check_not_empty(features, 1, description)  # now, not at the first evaluation mid-training
  features = features.cache()
  decoded_tasks = []
  if decode_metrics:
    for task in pipeline.get_eval_tasks(mixture_or_task_name, split):
      examples = pipeline.get_task_dataset(task.name, task_feature_lengths, split, shuffle=False)
      task_features = pipeline.get_dataset(task.name, task_feature_lengths, split, shuffle=False, seed=None,
                                           num_epochs=1)
      if num_examples is not None:
        examples, task_features = examples.take(num_examples), task_features.take(num_examples)
      decoded_tasks.append(DecodedTask(task, list(examples.as_numpy_iterator()), task_features.cache()))
  eval_step = jax.jit(steps.make_eval_step(model, loss_config), out_shardings=partitioning.replicated(mesh))
  max_decode_length = int(task_feature_lengths["targets"])

  def evaluate(trainable: PyTree, frozen: PyTree) -> dict[str, float]:
    metrics = teacher_forced_metrics(eval_step, trainable, frozen, features, global_batch_size, mesh, description)
    params = train_state.merge_params(trainable, frozen)
    for decoded in decoded_tasks:
      vocabulary = decoded.task.output_features["targets"].vocabulary
      tokens = decode_all(model, params, decoded.features, global_batch_size, mesh, max_decode_length,
                          vocabulary.eos_id, f"split '{split}' of {decoded.task.name}")
      texts = [vocabulary.decode([int(t) for t in row]) for row in tokens]
      scores = pipeline.compute_metrics(decoded.task, decoded.examples, texts)
      metrics.update({f"{decoded.task.name}/{name}": float(value) for name, value in scores.items()})
    return metrics

  return evaluate
