"""BillSum tasks under mocked TFDS: prefix or none, summary targets, ROUGE and BLEU metrics."""

import pytest
import tensorflow_datasets as tfds
from _data_helpers import mock_tfds, using_test_vocabulary

from prompt_tuning_jax.data import billsum, metrics, pipeline, tasks

LENGTHS = {"inputs": 48, "targets": 24}


@pytest.fixture(scope="module")
def mocked_billsum():
  with using_test_vocabulary(), mock_tfds({billsum.TFDS_NAME: ("train", "test", "ca_test")}, num_examples=4):
    yield


def _examples(name: str, split: str = "validation") -> list[dict]:
  return list(tfds.as_numpy(pipeline.get_task_dataset(name, LENGTHS, split)))


def test_billsum_inputs_are_prefixed_bill_text(mocked_billsum):
  for ex in _examples(billsum.TASK_NAME):
    assert ex["inputs_pretokenized"].decode().startswith("summarize: ")
    assert ex["inputs"][-1] == 1 and len(ex["inputs"]) <= LENGTHS["inputs"]


def test_billsum_no_prefix_inputs_are_the_bare_bill_text(mocked_billsum):
  prefixed = _examples(billsum.TASK_NAME)
  bare = _examples(billsum.NO_PREFIX_TASK_NAME)
  assert [ex["inputs_pretokenized"].decode() for ex in bare] == [
      ex["inputs_pretokenized"].decode().removeprefix("summarize: ") for ex in prefixed]
  assert [ex["targets_pretokenized"] for ex in bare] == [ex["targets_pretokenized"] for ex in prefixed]


@pytest.mark.parametrize("split", ["train", "validation", "test", "ca_test"])
def test_billsum_has_train_validation_and_both_test_splits(mocked_billsum, split):
  assert _examples(billsum.TASK_NAME, split)


def test_billsum_scores_its_own_summaries_as_perfect_rouge_and_reports_bleu(mocked_billsum):
  examples = _examples(billsum.TASK_NAME)
  scores = pipeline.compute_metrics(billsum.TASK_NAME, examples,
                                    [ex["targets_pretokenized"].decode() for ex in examples])
  assert set(scores) == {"rouge1", "rouge2", "rougeLsum", "bleu"}
  # (Mock summaries can be one word long, which has no bigram for ROUGE-2 to match.)
  assert scores["rouge1"] == pytest.approx(100.0) and scores["rougeLsum"] == pytest.approx(100.0)
  # Mock summaries are too short for 4-grams, where corpus BLEU is 0 by definition; test_data_metrics.py
  # checks BLEU's values.
  summaries = [ex["targets_pretokenized"].decode() for ex in examples]
  assert scores["bleu"] == pytest.approx(metrics.bleu(summaries, summaries)["bleu"])


def test_billsum_has_no_class_labels():
  assert tasks.get_class_labels(billsum.TASK_NAME) is None


def test_billsum_validation_is_the_last_5_percent_of_train_disjoint_from_the_train_split():
  """The TFDS mock ignores split slicing (every slice yields the mock's examples), so the slices are checked
  through TFDS's own split arithmetic on a 18,949-example `train` (BillSum's size)."""
  split_map = tasks.get_mixture_or_task(billsum.TASK_NAME).source.tfds_dataset._split_map  # what TFDS is asked
  assert split_map == {"train": "train[:95%]", "validation": "train[95%:]", "test": "test",
                                           "ca_test": "ca_test"}
  train_info = {"train": tfds.core.SplitInfo(name="train", shard_lengths=[18949], num_bytes=0)}
  ranges = {}
  for split in ("train", "validation"):
    (absolute,) = tfds.core.ReadInstruction.from_spec(split_map[split]).to_absolute(train_info)
    ranges[split] = range(absolute.from_ or 0, 18949 if absolute.to is None else absolute.to)
  assert ranges["train"].stop == ranges["validation"].start and ranges["validation"].stop == 18949
  assert ranges["train"].start == 0 and len(ranges["validation"]) == 947  # 5% of 18,949 (TFDS rounds the boundary)
