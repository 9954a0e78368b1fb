"""training/input_pipeline.py: step-indexed host batches, both ways of splitting a split over processes.

The two-process CLI runs (test_cli_multiprocess.py) check the same on real processes; these check the batching
itself on a dataset whose examples are numbered, fast.
"""

import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning_jax.training import input_pipeline

GLOBAL = 8


def _numbered(count: int = 64, seed: int = 3) -> tf.data.Dataset:
  """Examples {'id': [1], 'tokens': [3]} in a fixed shuffled order, repeated forever."""
  ids = np.arange(count, dtype=np.int32)
  ds = tf.data.Dataset.from_tensor_slices({"id": ids[:, None], "tokens": np.stack([ids, ids * 2, ids * 3], 1)})
  return ds.shuffle(count, seed=seed, reshuffle_each_iteration=True).repeat()


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_global_train_batches_split_every_global_batch_by_rows():
  steps = 12  # 96 examples: the second epoch is reshuffled
  plain = _take(input_pipeline.train_batches(_numbered(), GLOBAL, 0), steps)  # one process: the global batches
  hosts = [_take(input_pipeline.global_train_batches(_numbered(), GLOBAL, rows, 0), steps)
           for rows in (slice(0, 4), slice(4, 8))]
  for step in range(steps):
    for name in ("id", "tokens"):
      np.testing.assert_array_equal(np.concatenate([hosts[0][step][name], hosts[1][step][name]]),
                                    plain[step][name], err_msg=f"step {step}, {name}")
    assert not set(hosts[0][step]["id"].ravel()) & set(hosts[1][step]["id"].ravel())
  first_epoch = np.concatenate([batch["id"].ravel() for batch in plain[:8]])
  np.testing.assert_array_equal(np.sort(first_epoch), np.arange(64))  # each example once per epoch
  assert not np.array_equal(first_epoch, np.arange(64))  # and shuffled


def test_global_train_batches_resume_at_a_step_with_the_uninterrupted_rows():
  rows = slice(2, 6)
  whole = _take(input_pipeline.global_train_batches(_numbered(), GLOBAL, rows, 0), 7)
  resumed = _take(input_pipeline.global_train_batches(_numbered(), GLOBAL, rows, 4), 3)
  for a, b in zip(whole[4:], resumed, strict=True):
    np.testing.assert_array_equal(a["id"], b["id"])
  assert whole[0]["id"].shape == (4, 1)


def test_source_train_batches_resume_at_a_step_with_the_uninterrupted_batches():
  whole = _take(input_pipeline.train_batches(_numbered(), 4, 0), 7)
  resumed = _take(input_pipeline.train_batches(_numbered(), 4, 5), 2)
  for a, b in zip(whole[5:], resumed, strict=True):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])


@pytest.mark.parametrize("rows", [slice(4, 12), slice(6, 6), slice(-2, 4)])
def test_global_train_batches_refuse_rows_outside_the_global_batch(rows):
  with pytest.raises(ValueError, match="not within a global batch of 8"):
    input_pipeline.global_train_batches(_numbered(), GLOBAL, rows, 0)


def test_a_split_smaller_than_one_global_batch_is_an_empty_dataset_error():
  small = tf.data.Dataset.from_tensor_slices({"id": np.arange(5, dtype=np.int32)[:, None]})
  with pytest.raises(input_pipeline.EmptyDatasetError, match="fewer than 8 examples"):
    next(input_pipeline.global_train_batches(small, GLOBAL, slice(0, 4), 0))
