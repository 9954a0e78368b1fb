"""Synthetic text-to-text tasks that need no download: the tests' data and the offline demo's.

Every task reads the same kind of input, a few letters such as "k d a f", so without its prefix an input
does not say which task is meant; only a prompt can:

  synthetic_copy       "copy: k d a f"      -> "k d a f"
  synthetic_reverse    "reverse: k d a f"   -> "f a d k"
  synthetic_sort       "sort: k d a f"      -> "a d f k"
  synthetic_last       "last: k d a f"      -> "f"
  synthetic_count      "count: k d a f"     -> "4"
  synthetic_majority   "majority: k d a f"  -> "red" (most letters are from the red half a-f; "blue" when
                                               most are from g-l, "tie" when as many are from each)

`taskless_synthetic_<name>` reads "k d a f" alone; `synthetic_pretrain` mixes the prefixed tasks equally.
Examples are a pure function of (task, split, size, seed). The splits are disjoint by construction: a hash
of the letter sequence assigns every possible input to exactly one split, for every task.
"""

import dataclasses
import functools
import zlib
from collections.abc import Callable, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning_jax.data import metrics, postprocessors, preprocessors, vocab

ALPHABET = tuple("abcdefghijkl")
RED_LETTERS = frozenset(ALPHABET[: len(ALPHABET) // 2])
MAJORITY_LABELS = ("red", "blue", "tie")
SPLITS = ("train", "validation", "test")
MIXTURE_NAME = "synthetic_pretrain"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Sizes and seed of the synthetic data; bind e.g. `SyntheticConfig.train_size = 5000` in gin."""
  train_size: int = 20_000
  validation_size: int = 500
  test_size: int = 500
  seed: int = 0
  min_length: int = 3
  max_length: int = 8

  def size(self, split: str) -> int:
    return {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}[split]


def _majority(letters: Sequence[str]) -> str:
  red = sum(letter in RED_LETTERS for letter in letters)
  blue = len(letters) - red
  return "red" if red > blue else "blue" if blue > red else "tie"


# Task name -> the target of a letter sequence.
TARGET_FNS: dict[str, Callable[[Sequence[str]], str]] = {
    "copy": lambda letters: " ".join(letters),
    "reverse": lambda letters: " ".join(reversed(letters)),
    "sort": lambda letters: " ".join(sorted(letters)),
    "last": lambda letters: letters[-1],
    "count": lambda letters: str(len(letters)),
    "majority": _majority,
}

# The tasks whose answers are a fixed set of label words.
CLASS_LABEL_SETS: dict[str, tuple[str, ...]] = {"majority": MAJORITY_LABELS}


def split_of(letters: Sequence[str]) -> str:
  """The one split an input belongs to: 1/20 of all inputs each for validation and test, the rest train."""
  bucket = zlib.crc32(" ".join(letters).encode()) % 20
  return "validation" if bucket == 0 else "test" if bucket == 1 else "train"


@functools.lru_cache(maxsize=64)
def generate_examples(task: str, split: str, num_examples: int, seed: int = 0, min_length: int = 3,
                      max_length: int = 8) -> dict[str, tuple[str, ...]]:
  """`num_examples` (unprefixed input, target) pairs of `task` for `split`, a pure function of the args.

  Returns:
    {"inputs": ("k d a f", ...), "targets": ("f a d k", ...)}, each of length num_examples.
  """
  if task not in TARGET_FNS:
    raise ValueError(f"unknown synthetic task '{task}'; expected one of {sorted(TARGET_FNS)}")
  if split not in SPLITS:
    raise ValueError(f"unknown synthetic split '{split}'; expected one of {SPLITS}")
  if not 1 <= min_length <= max_length:
    raise ValueError(f"synthetic lengths must satisfy 1 <= min_length <= max_length; got {min_length}, "
                     f"{max_length}")
  rng = np.random.default_rng([seed, zlib.crc32(task.encode()), SPLITS.index(split)])
  target_fn = TARGET_FNS[task]
  inputs, targets = [], []
  while len(inputs) < num_examples:
    lengths = rng.integers(min_length, max_length + 1, size=1024)
    letter_ids = rng.integers(0, len(ALPHABET), size=(1024, max_length))
    for length, ids in zip(lengths, letter_ids, strict=True):
      letters = [ALPHABET[i] for i in ids[:length]]
      if split_of(letters) == split and len(inputs) < num_examples:
        inputs.append(" ".join(letters))
        targets.append(target_fn(letters))
  return {"inputs": tuple(inputs), "targets": tuple(targets)}


class SyntheticDataSource(seqio.DataSource):
  """One synthetic task's examples, generated in memory from SyntheticConfig (read when a dataset is built)."""

  def __init__(self, task: str):
    if task not in TARGET_FNS:
      raise ValueError(f"unknown synthetic task '{task}'; expected one of {sorted(TARGET_FNS)}")
    self._task = task
    super().__init__(splits=SPLITS)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def num_input_examples(self, split: str) -> int:
    return SyntheticConfig().size(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length: Mapping[str, int] | None = None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    """{"inputs": "k d a f", "targets": ...} examples; `seed` orders the shuffle, SyntheticConfig.seed the data."""
    del sequence_length, use_cached, num_epochs  # the Task handles these
    config = SyntheticConfig()
    if config.size(split) < 1:
      raise ValueError(f"SyntheticConfig.{split}_size is {config.size(split)}; expected at least 1 example")
    examples = generate_examples(self._task, split, config.size(split), config.seed, config.min_length,
                                 config.max_length)
    ds = tf.data.Dataset.from_tensor_slices({k: list(v) for k, v in examples.items()})
    if shard_info:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      # The whole split is in memory, so shuffle all of it rather than through the Task's buffer alone.
      ds = ds.shuffle(config.size(split), seed=seed)
    return ds


def task_name(task: str, *, taskless: bool = False) -> str:
  return f"{'taskless_' if taskless else ''}synthetic_{task}"


# Task name -> class label strings, for the class-label prompt initializer.
CLASS_LABELS: dict[str, list[str]] = {
    task_name(task, taskless=taskless): list(labels)
    for task, labels in CLASS_LABEL_SETS.items() for taskless in (False, True)
}


def _metric_fns(task: str) -> list[Callable]:
  fns: list[Callable] = [metrics.sequence_accuracy]
  if task in ("copy", "reverse", "sort"):
    fns.append(metrics.token_accuracy)
  if task in CLASS_LABEL_SETS:
    fns.append(metrics.per_class_accuracy(CLASS_LABEL_SETS[task]))
  return fns


def register(vocabulary: seqio.Vocabulary | None = None) -> None:
  """Adds every synthetic task (prefixed and taskless) and the `synthetic_pretrain` mixture."""
  # Deferred so that importing this module works before scripts/build_demo_vocab.py has written the model.
  vocabulary = vocabulary or vocab.DeferredVocabulary(vocab.synthetic_vocabulary)
  features = vocab.output_features(vocabulary)
  for task in TARGET_FNS:
    for taskless in (False, True):
      seqio.TaskRegistry.add(
          task_name(task, taskless=taskless),
          source=SyntheticDataSource(task),
          preprocessors=[functools.partial(preprocessors.text_to_text, inputs_key="inputs",
                                           targets_key="targets", prefix=None if taskless else f"{task}:")]
          + preprocessors.tokenize_and_append_eos(),
          output_features=features,
          postprocess_fn=postprocessors.text,
          metric_fns=_metric_fns(task))
  seqio.MixtureRegistry.add(MIXTURE_NAME, [task_name(task) for task in TARGET_FNS], default_rate=1.0)
