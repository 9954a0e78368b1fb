"""Host-local batches for training and evaluation.

Training reads a deterministic, infinitely repeated dataset (fixed shuffle seed), so the batch of step k is the
k-th batch: resuming at step k skips k batches and sees exactly the examples an uninterrupted run would.
Evaluation reads the whole split on every process in global batches (the last one padded with all-zero rows, which
carry no loss weight) and each process feeds its own rows of each batch.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh

from prompt_tuning_jax.training import partitioning

HostBatch = Mapping[str, np.ndarray]
# Debugging aid: a directory where every training host batch is saved as process_{i}_step_{k}.npz (the
# multi-process test compares the hosts' batches with it).
BATCH_LOG_DIR_ENV = "PROMPT_TUNING_JAX_BATCH_LOG_DIR"


class EmptyDatasetError(ValueError):
  """A split yielded too few examples to form one batch."""


def check_not_empty(dataset: tf.data.Dataset, batch_size: int, description: str) -> None:
  """Raises EmptyDatasetError unless `dataset` yields at least one full batch (reads one batch)."""
  if not any(True for _ in dataset.batch(batch_size, drop_remainder=True).take(1)):
    raise EmptyDatasetError(f"{description} yields fewer than {batch_size} examples per process, not one batch; "
                            "check the task's data (TFDS data dir, split) or lower BATCH_SIZE")


def train_batches(dataset: tf.data.Dataset, host_batch_size: int, start_step: int,
                  description: str = "the train split") -> Iterator[HostBatch]:
  """Batches [host_batch, ...] of `dataset` from batch number `start_step` on.

  Args:
    dataset: this process's shard of the examples (model features of fixed length), repeated and shuffled with a
      fixed seed, so its order is the same on every run.
    host_batch_size: examples per batch on this process.
    start_step: number of batches to skip (the step a resumed run starts at).
    description: names the data in the error raised when not even one batch can be formed.
  """
  batches = dataset.batch(host_batch_size, drop_remainder=True).skip(start_step).prefetch(tf.data.AUTOTUNE)
  iterator = batches.as_numpy_iterator()
  try:
    first = next(iterator)
  except StopIteration:
    raise EmptyDatasetError(f"{description} yields fewer than {host_batch_size} examples per process, not one "
                            f"batch (resuming at step {start_step}); check the task's data (TFDS data dir, "
                            "split) or lower BATCH_SIZE") from None
  log_dir = os.environ.get(BATCH_LOG_DIR_ENV)
  for step, batch in enumerate(itertools.chain([first], iterator), start=start_step):
    if log_dir:
      np.savez(os.path.join(log_dir, f"process_{jax.process_index()}_step_{step}.npz"), **batch)
    yield batch


def _pad_rows(batch: HostBatch, rows: int) -> dict[str, np.ndarray]:
  """Pads every array [n, ...] with zero rows to [rows, ...]."""
  return {name: np.concatenate([value, np.zeros((rows - len(value), *value.shape[1:]), value.dtype)])
          if len(value) < rows else value for name, value in batch.items()}


def eval_global_batches(dataset: tf.data.Dataset, global_batch_size: int, mesh: Mesh,
                        description: str = "the validation split") -> Iterator[tuple[dict[str, jax.Array], int]]:
  """Global batches over a whole finite dataset, read in full by every process.

  Yields:
    (batch {name: [global_batch, ...] global array}, number of real examples in it); padding rows are zeros.
  """
  rows = partitioning.host_batch_rows(mesh, global_batch_size)
  count = 0
  for batch in dataset.batch(global_batch_size).as_numpy_iterator():
    real = len(next(iter(batch.values())))
    count += real
    padded = _pad_rows(batch, global_batch_size)
    host = {name: value[rows] for name, value in padded.items()}
    yield partitioning.global_batch(host, mesh, global_batch_size), real
  if count == 0:
    raise EmptyDatasetError(f"{description} has no examples; check the task's data (TFDS data dir, split name)")
