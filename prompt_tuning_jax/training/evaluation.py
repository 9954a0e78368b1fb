"""Evaluation on a held-out split: teacher-forced loss and token accuracy, and the tasks' metrics on decoded text
(greedy, or t5x's eval decoding: beam search with 1 beam and length penalty 0.6) and, when asked, on rank
classification (every class label scored by log-likelihood, the most likely one taken as the prediction).

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

from prompt_tuning_jax.data import pipeline, tasks
from prompt_tuning_jax.inference import decoding, scoring
from prompt_tuning_jax.training import input_pipeline, losses, partitioning, steps, train_state

PyTree = Any
RANK_CLASSIFICATION_PREFIX = "rank_classification"


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How evaluation decodes for the tasks' metrics (gin: `runs.evaluate.decoding = @evaluation.DecodingConfig()`).

  Attributes:
    method: 'greedy', or 'beam' (t5x's eval decodes with beam search, 1 beam, alpha 0.6: not the same as greedy,
      which never stops at a likely early EOS it passed over).
    num_beams: beams kept; the best is scored.
    alpha: T5X's length penalty exponent ((5 + length) / 6) ** alpha.
  """

  method: str = "greedy"
  num_beams: int = 1
  alpha: float = 0.6

  def __post_init__(self):
    if self.method not in ("greedy", "beam"):
      raise ValueError(f"evaluation decodes with 'greedy' or 'beam', got {self.method!r}; set DECODE_METHOD to "
                       "one of them")
    decoding.check_decode_args(self.method, 1, self.num_beams, self.alpha, 1.0, 0, 1.0)


@dataclasses.dataclass(frozen=True)
class DecodedTask:
  """One task scored on predictions: its examples (for targets and postprocessing), model inputs and, for rank
  classification, its class labels and their target tokens [labels, targets length]."""

  task: seqio.Task
  examples: Sequence[Mapping[str, Any]]  # numpy dicts from pipeline.get_task_dataset, in order
  features: tf.data.Dataset  # model features of the same examples, same order, cached
  class_labels: Sequence[str] | None = None
  candidates: np.ndarray | None = None


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
               max_decode_length: int, eos_id: int, description: str,
               config: DecodingConfig = DecodingConfig()) -> list[np.ndarray]:
  """Predictions [max_decode_length] (int32, EOS then zeros; beam search: the best beam) for every example of
  `dataset`, in order."""
  predictions: list[np.ndarray] = []
  for batch, real in input_pipeline.eval_global_batches(dataset, global_batch_size, mesh, description):
    tokens, _ = decoding.decode(model, params, batch["encoder_input_tokens"], max_decode_length=max_decode_length,
                                method=config.method, num_beams=config.num_beams, alpha=config.alpha,
                                eos_id=eos_id)
    tokens = partitioning.fetch(tokens)  # [batch, length], or [batch, beams, length] best first
    predictions.extend(tokens[:real] if config.method == "greedy" else tokens[:real, 0])
  return predictions


def rank_classify_all(model: nn.Module, params: PyTree, dataset: tf.data.Dataset, global_batch_size: int,
                      mesh: Mesh, candidates: np.ndarray, description: str) -> list[int]:
  """The index of the most likely candidate target (rows of `candidates` [labels, length]) for every example."""
  predictions: list[int] = []
  for batch, real in input_pipeline.eval_global_batches(dataset, global_batch_size, mesh, description):
    best, _ = scoring.rank_classify(model, params, batch["encoder_input_tokens"], candidates)
    predictions.extend(int(i) for i in partitioning.fetch(best)[:real])
  return predictions


def _decoded_task(task: seqio.Task, task_feature_lengths: Mapping[str, int], split: str, num_examples: int | None,
                  rank_classification: bool) -> DecodedTask:
  examples = pipeline.get_task_dataset(task.name, task_feature_lengths, split, shuffle=False)
  features = pipeline.get_dataset(task.name, task_feature_lengths, split, shuffle=False, seed=None, num_epochs=1)
  if num_examples is not None:
    examples, features = examples.take(num_examples), features.take(num_examples)
  labels = tasks.get_class_labels(task.name) if rank_classification else None
  # Whole labels, however long: scoring a candidate needs no room in TASK_FEATURE_LENGTHS['targets'].
  candidates = scoring.candidate_tokens(task.output_features["targets"].vocabulary, labels) if labels else None
  return DecodedTask(task, list(examples.as_numpy_iterator()), features.cache(), labels, candidates)


def make_evaluate(*, model: nn.Module, loss_config: losses.LossConfig, mesh: Mesh, global_batch_size: int,
                  mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str = "validation",
                  num_examples: int | None = None, decode_metrics: bool = True,
                  decoding_config: DecodingConfig = DecodingConfig(),
                  rank_classification: bool = False) -> Callable[[PyTree, PyTree], dict[str, float]]:
  """Builds `evaluate(trainable, frozen) -> {metric: value}` for a task or mixture's `split`.

  Metrics: 'loss', 'z_loss', 'token_accuracy', 'num_examples' (teacher-forced, per target token), for each task
  with metrics '<task>/<metric>' from decoding (e.g. 'synthetic_reverse/sequence_accuracy'), and with
  `rank_classification` 'rank_classification/<task>/<metric>' for each task with class labels: the same metrics
  of the class label with the highest log-likelihood (e.g. 'rank_classification/super_glue_rte_v102/accuracy').

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
    decoding_config: how to decode (greedy, or t5x's 1-beam search with length penalty 0.6).
    rank_classification: also rank-classify with each task's class labels (the tasks without labels of a
      mixture are skipped; a task or mixture with none is an error).
  """
  features = pipeline.get_dataset(mixture_or_task_name, task_feature_lengths, split, shuffle=False, seed=None,
                                  num_epochs=1)
  if num_examples is not None:
    features = features.take(num_examples)
  description = f"split '{split}' of {mixture_or_task_name}"
  input_pipeline.check_not_empty(features, 1, description)  # now, not at the first evaluation mid-training
  features = features.cache()
  decoded_tasks = []
  if decode_metrics or rank_classification:
    decoded_tasks = [_decoded_task(task, task_feature_lengths, split, num_examples, rank_classification)
                     for task in pipeline.get_eval_tasks(mixture_or_task_name, split)]
  if rank_classification and not any(t.class_labels for t in decoded_tasks):
    raise ValueError(f"{mixture_or_task_name} has no task with class labels on split '{split}', so nothing to "
                     "rank-classify; set RANK_CLASSIFICATION=False (or rank_classification=False)")
  eval_step = jax.jit(steps.make_eval_step(model, loss_config), out_shardings=partitioning.replicated(mesh))
  max_decode_length = int(task_feature_lengths["targets"])

  def evaluate(trainable: PyTree, frozen: PyTree) -> dict[str, float]:
    metrics = teacher_forced_metrics(eval_step, trainable, frozen, features, global_batch_size, mesh, description)
    params = train_state.merge_params(trainable, frozen)
    for decoded in decoded_tasks:
      name, where = decoded.task.name, f"split '{split}' of {decoded.task.name}"
      if decode_metrics:
        vocabulary = decoded.task.output_features["targets"].vocabulary
        tokens = decode_all(model, params, decoded.features, global_batch_size, mesh, max_decode_length,
                            vocabulary.eos_id, where, decoding_config)
        texts = [vocabulary.decode([int(t) for t in row]) for row in tokens]
        scores = pipeline.compute_metrics(decoded.task, decoded.examples, texts)
        metrics.update({f"{name}/{metric}": float(value) for metric, value in scores.items()})
      if decoded.class_labels:
        best = rank_classify_all(model, params, decoded.features, global_batch_size, mesh, decoded.candidates,
                                 where)
        scores = pipeline.compute_metrics(decoded.task, decoded.examples, [decoded.class_labels[i] for i in best])
        metrics.update({f"{RANK_CLASSIFICATION_PREFIX}/{name}/{metric}": float(value)
                        for metric, value in scores.items()})
    return metrics

  return evaluate
