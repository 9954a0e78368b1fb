"""Registered task or mixture -> tf.data examples: model features for training, task examples for eval.

  get_dataset        encoder/decoder arrays via seqio.EncDecFeatureConverter(pack=False): the prompt is
                     prepended per example, so examples are never packed together by default.
  get_task_dataset   the task's own examples (tokens plus `*_pretokenized` text and the fields its
                     postprocessor reads) for decoding and scoring with `compute_metrics`.

Both truncate `inputs`/`targets` to TASK_FEATURE_LENGTHS keeping the final EOS, as seqio does, but count
what they cut: the first truncation of a (task, split) logs a warning with the count so far, and
`truncation_stats` reports the running totals.
"""

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from prompt_tuning_jax.data import postprocessors, tasks

TASK_FEATURES = ("inputs", "targets")


def validate_task_feature_lengths(task_feature_lengths: Mapping[str, int] | None) -> dict[str, int]:
  """TASK_FEATURE_LENGTHS as a dict of positive ints for exactly `inputs` and `targets`."""
  example = "e.g. TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 128}"
  if not isinstance(task_feature_lengths, Mapping):
    raise ValueError(f"TASK_FEATURE_LENGTHS is {task_feature_lengths!r}, expected a dict; set {example}")
  missing = [k for k in TASK_FEATURES if k not in task_feature_lengths]
  if missing:
    raise ValueError(f"TASK_FEATURE_LENGTHS {dict(task_feature_lengths)} is missing {missing}; set {example}")
  unknown = sorted(set(task_feature_lengths) - set(TASK_FEATURES))
  if unknown:
    raise ValueError(f"TASK_FEATURE_LENGTHS {dict(task_feature_lengths)} has unknown features {unknown}; "
                     f"expected only {list(TASK_FEATURES)}")
  for key, length in task_feature_lengths.items():
    if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 1:
      raise ValueError(f"TASK_FEATURE_LENGTHS['{key}'] is {length!r}, expected a positive int")
  return {k: int(task_feature_lengths[k]) for k in TASK_FEATURES}


def set_tfds_data_dir(data_dir: str) -> None:
  """Reads every TFDS dataset from `data_dir` (the --tfds_data_dir flag) instead of ~/tensorflow_datasets."""
  if "://" not in data_dir and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"--tfds_data_dir {data_dir} is not a directory; pass the directory that "
                            "`tfds build --data_dir=...` wrote to")
  seqio.set_tfds_data_dir_override(data_dir)


def _tasks_of(provider: seqio.Task | seqio.Mixture) -> list[seqio.Task]:
  return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def check_tfds_prepared(provider: seqio.Task | seqio.Mixture) -> None:
  """Raises FileNotFoundError, saying how to prepare it, if a TFDS dataset the provider reads is missing.

  Without this seqio would try to download and prepare the dataset itself, deep inside tf.data.
  """
  for task in _tasks_of(provider):
    if not isinstance(task.source, seqio.TfdsDataSource):
      continue
    loader = task.source.tfds_dataset
    builder = loader.builder
    if not builder.info.splits:
      root = builder.data_dir_root
      dataset = loader.name.split(":")[0]
      raise FileNotFoundError(
          f"TFDS dataset {loader.name} (task {task.name}) is not prepared under {root}; run "
          f"`tfds build {dataset} --data_dir={root}` where the internet is reachable, or pass --tfds_data_dir "
          "pointing at a directory where it is prepared")


def _check_split(provider: seqio.Task | seqio.Mixture, split: str) -> None:
  available = sorted({s for task in _tasks_of(provider) for s in task.splits})
  if split not in available:
    raise ValueError(f"{provider.name} has no '{split}' split; it has {available}")


@dataclasses.dataclass
class TruncationStats:
  """Examples seen and, per feature, how many were longer than TASK_FEATURE_LENGTHS."""
  seen: int = 0
  truncated: dict[str, int] = dataclasses.field(default_factory=dict)
  warned: bool = False


_TRUNCATION_STATS: dict[tuple[str, str], TruncationStats] = {}
_TRUNCATION_LOCK = threading.Lock()


def truncation_stats(mixture_or_task_name: str, split: str) -> TruncationStats:
  """A snapshot of the truncation counts of every dataset built for (name, split) in this process."""
  with _TRUNCATION_LOCK:
    stats = _TRUNCATION_STATS.get((mixture_or_task_name, split), TruncationStats())
    return dataclasses.replace(stats, truncated=dict(stats.truncated))


def _trim_and_count(ds: tf.data.Dataset, name: str, split: str, lengths: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Trims `inputs`/`targets` to `lengths` (keeping EOS last, as seqio does) and counts what it cut."""
  keys = [k for k in TASK_FEATURES if k in ds.element_spec]
  limits = np.asarray([lengths[k] for k in keys])
  with _TRUNCATION_LOCK:
    stats = _TRUNCATION_STATS.setdefault((name, split), TruncationStats())

  def count(sizes: np.ndarray) -> np.int64:
    over = sizes > limits
    with _TRUNCATION_LOCK:
      stats.seen += 1
      for key, is_over in zip(keys, over, strict=True):
        if is_over:
          stats.truncated[key] = stats.truncated.get(key, 0) + 1
      warn = bool(over.any()) and not stats.warned
      stats.warned |= warn
      counts = dict(stats.truncated)
      seen = stats.seen
    if warn:
      cut = ", ".join(f"{k} of {s} tokens to {lim}" for k, s, lim, o in zip(keys, sizes, limits, over, strict=True) if o)
      logging.warning("%s (%s): truncating an example (%s); %s of %d examples so far were truncated. "
                      "Raise TASK_FEATURE_LENGTHS to keep whole examples; counts: "
                      "pipeline.truncation_stats(%r, %r)", name, split, cut, counts, seen, name, split)
    return np.int64(0)

  def trim(x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    sizes = tf.stack([tf.size(x[k]) for k in keys])
    counted = tf.numpy_function(count, [sizes], tf.int64, stateful=True)
    x = dict(x)
    with tf.control_dependencies([counted]):
      for key in keys:
        tokens, length = x[key], lengths[key]
        if output_features[key].add_eos:
          keep_eos = tf.concat([tokens[:length - 1], tokens[-1:]], axis=0)
          x[key] = tf.cond(tf.size(tokens) > length, lambda t=keep_eos: t, lambda t=tokens: tf.identity(t))
        else:
          x[key] = tf.identity(tokens[:length])
    return x

  return ds.map(trim, num_parallel_calls=tf.data.AUTOTUNE)


def _examples(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str, *,
              shuffle: bool, seed: int | None, shard_id: int, num_shards: int, num_epochs: int | None,
              copy_pretokenized: bool) -> tuple[tf.data.Dataset, dict[str, int]]:
  lengths = validate_task_feature_lengths(task_feature_lengths)
  if not 0 <= shard_id < num_shards:
    raise ValueError(f"shard_id {shard_id} is not in [0, num_shards={num_shards})")
  provider = tasks.get_mixture_or_task(mixture_or_task_name)
  check_tfds_prepared(provider)
  _check_split(provider, split)
  kwargs: dict[str, Any] = dict(
      sequence_length=None, split=split, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None,
      trim_output_features=False)
  if isinstance(provider, seqio.Mixture):
    kwargs["copy_pretokenized"] = copy_pretokenized
  # sequence_length=None: seqio appends EOS without trimming, so the lengths can be counted here.
  ds = provider.get_dataset(**kwargs)
  return _trim_and_count(ds, mixture_or_task_name, split, lengths, provider.output_features), lengths


def get_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str, *,
                shuffle: bool, seed: int | None, shard_id: int = 0, num_shards: int = 1,
                num_epochs: int | None = None,
                feature_converter: seqio.FeatureConverter | None = None) -> tf.data.Dataset:
  """Unbatched model features of a registered task or mixture.

  Returns:
    A dataset of {"encoder_input_tokens": [inputs_len], "decoder_input_tokens": [targets_len],
    "decoder_target_tokens": [targets_len], "decoder_loss_weights": [targets_len]}, int32, zero-padded
    (plus segment ids and positions if `feature_converter` packs). `num_epochs=None` repeats forever.
  """
  ds, lengths = _examples(mixture_or_task_name, task_feature_lengths, split, shuffle=shuffle, seed=seed,
                          shard_id=shard_id, num_shards=num_shards, num_epochs=num_epochs,
                          copy_pretokenized=False)
  converter = feature_converter or seqio.EncDecFeatureConverter(pack=False)
  return converter(ds, task_feature_lengths=lengths)


def get_task_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str, *,
                     shuffle: bool = False, seed: int | None = None, shard_id: int = 0, num_shards: int = 1,
                     num_epochs: int | None = 1) -> tf.data.Dataset:
  """Unbatched, unpadded task examples: "inputs"/"targets" tokens ending in EOS, their "*_pretokenized" text
  and, for a task (not a mixture), the extra fields its postprocessor reads (ids, answer lists)."""
  ds, _ = _examples(mixture_or_task_name, task_feature_lengths, split, shuffle=shuffle, seed=seed,
                    shard_id=shard_id, num_shards=num_shards, num_epochs=num_epochs, copy_pretokenized=True)
  return ds


def get_eval_tasks(mixture_or_task_name: str, split: str) -> list[seqio.Task]:
  """The tasks to score for `split`: the task itself, or a mixture's tasks, that have metrics and the split."""
  provider = tasks.get_mixture_or_task(mixture_or_task_name)
  return [t for t in _tasks_of(provider) if t.predict_metric_fns and split in t.splits]


def compute_metrics(task: seqio.Task | str, examples: Sequence[Mapping[str, Any]],
                    predictions: Sequence[str]) -> dict[str, float]:
  """Scores decoded predictions as seqio's evaluator does: postprocess targets and predictions, run metrics.

  Args:
    task: a task or its name.
    examples: the task examples the predictions answer, as numpy dicts (e.g. `tfds.as_numpy` of
      `get_task_dataset`), in the same order.
    predictions: decoded model outputs, one string per example.
  """
  task = tasks.get_mixture_or_task(task) if isinstance(task, str) else task
  if not isinstance(task, seqio.Task):
    raise ValueError(f"{task.name} is a mixture; score each of get_eval_tasks({task.name!r}, split) instead")
  if len(examples) != len(predictions):
    raise ValueError(f"{task.name}: {len(predictions)} predictions for {len(examples)} examples; "
                     "pass one decoded prediction per example")
  targets = [task.postprocess_fn(postprocessors.as_text(ex["targets_pretokenized"]), example=ex, is_target=True)
             for ex in examples]
  predicted = [task.postprocess_fn(p, example=ex, is_target=False)
               for ex, p in zip(examples, predictions, strict=True)]
  results: dict[str, float] = {}
  for metric_fn in task.predict_metric_fns:
    results.update(metric_fn(targets, predicted))
  return results
