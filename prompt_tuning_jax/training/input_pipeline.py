"""Host-local batches for training and evaluation.

Training reads a deterministic, infinitely repeated dataset (fixed shuffle seed), so the batch of step k is the
k-th batch: resuming at step k skips k batches and sees exactly the examples an uninterrupted run would. Two ways
to split it over processes (`runs.train(data_sharding=...)`):
- 'source' (t5x's): each process reads its seqio `ShardInfo` shard, shuffled on its own, and batches it; the
  global batch of step k depends on the number of processes.
- 'global': every process reads the whole split in the same shuffled order, forms the global batch and keeps its
  own rows of it, so the global batch of step k is the one a single process draws, whatever the topology (each
  process reads all the data: fine for prompt-tuning datasets, wasteful for pretraining corpora).
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
  return _from_step(dataset.batch(host_batch_size, drop_remainder=True), start_step,
                    f"{description} yields fewer than {host_batch_size} examples per process")


def _from_step(batches: tf.data.Dataset, start_step: int, too_few: str) -> Iterator[HostBatch]:
  """The host batches of `batches` from number `start_step` on (logged where BATCH_LOG_DIR_ENV says)."""
  iterator = batches.skip(start_step).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
  try:
    first = next(iterator)
  except StopIteration:
    raise EmptyDatasetError(f"{too_few}, not one batch (resuming at step {start_step}); check the task's data "
                            "(TFDS data dir, split) or lower BATCH_SIZE") from None
  log_dir = os.environ.get(BATCH_LOG_DIR_ENV)
  for step, batch in enumerate(itertools.chain([first], iterator), start=start_step):
    if log_dir:
      np.savez(os.path.join(log_dir, f"process_{jax.process_index()}_step_{step}.npz"), **batch)
    yield batch


def global_train_batches(dataset: tf.data.Dataset, global_batch_size: int, rows: slice, start_step: int,
                         description: str = "the train split") -> Iterator[HostBatch]:
  """This process's `rows` of every global batch of the whole `dataset`, from batch number `start_step` on.

  Args:
    dataset: all the examples (not sharded), repeated and shuffled with a fixed seed, the same on every process.
    global_batch_size: examples per step over all processes.
    rows: this process's rows of each global batch (`partitioning.host_batch_rows`).
    start_step: number of global batches to skip (the step a resumed run starts at).
    description: names the data in the error raised when not even one batch can be formed.
  """
  if not 0 <= rows.start < rows.stop <= global_batch_size:
    raise ValueError(f"rows {rows.start}:{rows.stop} are not within a global batch of {global_batch_size}")
  start, stop = rows.start, rows.stop
  host = dataset.batch(global_batch_size, drop_remainder=True).map(
      lambda batch: {name: value[start:stop] for name, value in batch.items()})
  return _from_step(host, start_step, f"{description} yields fewer than {global_batch_size} examples")


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
