"""Shared helpers of the data tests: a SentencePiece model trained on the fly and offline TFDS mocks."""

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator, Sequence

import gin
import numpy as np
import sentencepiece as spm
import seqio
import tensorflow_datasets as tfds

# Words of T5's SuperGLUE/BillSum formats plus the letters TFDS's mock data writes, so tokenization is
# exercised with real pieces rather than a stream of unknowns.
_WORDS = ("boolq cb copa multirc record rte wic wsc passage question hypothesis premise choice1 choice2 answer "
          "paragraph sentence1 sentence2 word text query entities summarize False True entailment "
          "not_entailment contradiction neutral <unk> : , . * #").split()


@functools.cache
def sentencepiece_model() -> str:
  """Path of a small SentencePiece model (pad 0, eos 1, unk 2, no bos), trained once per test session."""
  rng = np.random.default_rng(0)
  letters = list("abcdefghij")
  lines = [" ".join(_WORDS)] * 20
  lines += [" ".join("".join(rng.choice(letters, size=rng.integers(1, 6))) for _ in range(12)) for _ in range(300)]
  path = os.path.join(tempfile.mkdtemp(prefix="data_test_spm_"), "test.model")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=path[: -len(".model")], vocab_size=200, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2)
  return path


TEST_EXTRA_IDS = 10


@contextlib.contextmanager
def using_test_vocabulary() -> Iterator[str]:
  """Binds the TFDS tasks' vocabulary to the test model for the duration (gin is cleared afterwards)."""
  path = sentencepiece_model()
  with gin.unlock_config():
    gin.bind_parameter("t5_vocabulary.sentencepiece_model_file", path)
    gin.bind_parameter("t5_vocabulary.extra_ids", TEST_EXTRA_IDS)
  try:
    yield path
  finally:
    gin.clear_config()


@functools.cache
def _mock_metadata_root() -> str:
  return tempfile.mkdtemp(prefix="data_test_tfds_")


def _write_split_metadata(root: str, tfds_name: str, splits: Sequence[str], num_examples: int) -> None:
  """Writes dataset_info.json with the given splits, so seqio sees a prepared dataset (no records needed)."""
  builder = tfds.builder(tfds_name, data_dir=root)
  infos = [
      tfds.core.SplitInfo(
          name=split, shard_lengths=[num_examples], num_bytes=0,
          filename_template=tfds.core.ShardedFileTemplate(
              data_dir=builder.data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
              dataset_name=builder.name, split=split, filetype_suffix="tfrecord"))
      for split in splits
  ]
  builder.info.set_splits(tfds.core.SplitDict(infos))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


def _forget_tfds_builders() -> None:
  # seqio memoizes TFDS builders per (name, data_dir); a builder made under another mock would leak in.
  seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()


@contextlib.contextmanager
def mock_tfds(datasets: dict[str, Sequence[str]], num_examples: int = 4) -> Iterator[None]:
  """TFDS returns random examples of the named datasets ({"super_glue/rte:1.0.2": ("train", ...)})."""
  root = _mock_metadata_root()
  for tfds_name, splits in datasets.items():
    _write_split_metadata(root, tfds_name, splits, num_examples)
  _forget_tfds_builders()
  try:
    with tfds.testing.mock_data(num_examples=num_examples, data_dir=root):
      yield
  finally:
    _forget_tfds_builders()


@contextlib.contextmanager
def unprepared_tfds() -> Iterator[str]:
  """Points TFDS at an empty directory, as on a machine where nothing was built."""
  empty = tempfile.mkdtemp(prefix="data_test_empty_tfds_")
  _forget_tfds_builders()
  seqio.set_tfds_data_dir_override(empty)
  try:
    yield empty
  finally:
    seqio.set_tfds_data_dir_override(None)
    _forget_tfds_builders()
