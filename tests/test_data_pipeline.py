"""The dataset API the trainer uses: model features, truncation counts, sharding, eval scoring, bad input."""

import logging

import gin
import numpy as np
import pytest
import sentencepiece as spm
import seqio
import tensorflow_datasets as tfds
from _data_helpers import TEST_EXTRA_IDS, unprepared_tfds, using_test_vocabulary

from prompt_tuning_jax.data import pipeline, synthetic, tasks, vocab

LENGTHS = {"inputs": 16, "targets": 12}
MODEL_FEATURES = {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"}


def test_model_features_are_padded_int32_with_shifted_decoder_inputs():
  ds = pipeline.get_dataset("synthetic_reverse", LENGTHS, "validation", shuffle=False, seed=None, num_epochs=1)
  ex = next(iter(tfds.as_numpy(ds)))
  assert set(ex) == MODEL_FEATURES
  assert all(v.dtype == np.int32 for v in ex.values())
  assert ex["encoder_input_tokens"].shape == (16,) and ex["decoder_target_tokens"].shape == (12,)
  targets = ex["decoder_target_tokens"]
  assert ex["decoder_input_tokens"].tolist() == [0, *targets[:-1].tolist()]
  assert ex["decoder_loss_weights"].tolist() == (targets > 0).astype(np.int32).tolist()


def test_training_dataset_repeats_by_default():
  ds = pipeline.get_dataset("synthetic_count", LENGTHS, "validation", shuffle=False, seed=None)
  size = synthetic.SyntheticConfig().validation_size
  assert len(list(ds.take(size + 3))) == size + 3


def test_truncation_keeps_eos_last_counts_every_cut_and_warns_once(caplog):
  lengths = {"inputs": 4, "targets": 12}
  ds = pipeline.get_task_dataset("synthetic_sort", lengths, "test")
  with caplog.at_level(logging.WARNING):
    examples = list(tfds.as_numpy(ds))
  inputs = [ex["inputs"] for ex in examples]
  assert all(len(x) <= 4 and x[-1] == 1 for x in inputs)
  # "sort:" is 2 pieces and every letter 1, plus EOS: an input of n letters has n + 3 tokens.
  expected = sum(len(ex["inputs_pretokenized"].split()) - 1 + 3 > 4 for ex in examples)
  stats = pipeline.truncation_stats("synthetic_sort", "test")
  assert stats.seen == len(examples) and stats.truncated == {"inputs": expected}
  warnings = [r for r in caplog.records if "truncat" in r.getMessage()]
  assert len(warnings) == 1 and "synthetic_sort" in warnings[0].getMessage()


def test_truncated_targets_are_counted_too():
  # Every copy target has at least 3 letters + EOS, so all are cut to 2 letters + EOS.
  examples = list(tfds.as_numpy(pipeline.get_task_dataset("synthetic_copy", {"inputs": 32, "targets": 3}, "test")))
  assert all(ex["targets"][-1] == 1 and len(ex["targets"]) == 3 for ex in examples)
  assert pipeline.truncation_stats("synthetic_copy", "test").truncated == {"targets": len(examples)}


def test_shards_partition_the_split():
  def inputs(shard_id):
    ds = pipeline.get_task_dataset("synthetic_last", LENGTHS, "validation", shard_id=shard_id, num_shards=2)
    return [ex["inputs_pretokenized"] for ex in tfds.as_numpy(ds)]
  whole = synthetic.generate_examples("last", "validation", synthetic.SyntheticConfig().validation_size)
  first, second = inputs(0), inputs(1)
  assert len(first) + len(second) == len(whole["inputs"])
  assert sorted(first + second) == sorted(f"last: {x}".encode() for x in whole["inputs"])


def test_mixture_draws_from_every_member():
  ds = pipeline.get_task_dataset(synthetic.MIXTURE_NAME, LENGTHS, "train", shuffle=False, seed=0, num_epochs=None)
  prefixes = {ex["inputs_pretokenized"].split(b":")[0].decode() for ex in tfds.as_numpy(ds.take(120))}
  assert prefixes == set(synthetic.TARGET_FNS)


def test_eval_tasks_of_a_mixture_are_its_scored_tasks():
  names = [t.name for t in pipeline.get_eval_tasks(synthetic.MIXTURE_NAME, "validation")]
  assert sorted(names) == sorted(synthetic.task_name(task) for task in synthetic.TARGET_FNS)


def test_compute_metrics_scores_perfect_and_wrong_predictions():
  examples = list(tfds.as_numpy(pipeline.get_task_dataset("synthetic_majority", LENGTHS, "validation")))
  perfect = pipeline.compute_metrics("synthetic_majority", examples,
                                     [ex["targets_pretokenized"].decode() for ex in examples])
  assert perfect["sequence_accuracy"] == pytest.approx(100.0)
  assert {k for k in perfect if k.startswith("accuracy_")} == {"accuracy_red", "accuracy_blue", "accuracy_tie"}
  wrong = pipeline.compute_metrics("synthetic_majority", examples, ["green"] * len(examples))
  assert wrong["sequence_accuracy"] == 0.0


def test_compute_metrics_rejects_a_prediction_count_mismatch():
  examples = list(tfds.as_numpy(pipeline.get_task_dataset("synthetic_last", LENGTHS, "validation").take(3)))
  with pytest.raises(ValueError, match="2 predictions for 3 examples"):
    pipeline.compute_metrics("synthetic_last", examples, ["a", "b"])


def test_every_task_has_a_postprocessor_and_metrics():
  for name in seqio.TaskRegistry.names():
    task = seqio.TaskRegistry.get(name)
    assert task.postprocessor is not None and task.predict_metric_fns, name


@pytest.mark.parametrize("lengths,match", [
    ({"inputs": 8}, "missing \\['targets'\\]"),
    ({"inputs": 8, "targets": 4, "labels": 2}, "unknown features \\['labels'\\]"),
    ({"inputs": 0, "targets": 4}, "TASK_FEATURE_LENGTHS\\['inputs'\\] is 0"),
    ([8, 4], "expected a dict"),
])
def test_bad_task_feature_lengths_are_named(lengths, match):
  with pytest.raises(ValueError, match=match):
    pipeline.get_dataset("synthetic_copy", lengths, "train", shuffle=False, seed=None)


def test_unknown_task_lists_close_matches():
  with pytest.raises(ValueError, match="unknown task or mixture 'synthetic_revers'.*synthetic_reverse"):
    pipeline.get_dataset("synthetic_revers", LENGTHS, "train", shuffle=False, seed=None)


def test_missing_split_is_named():
  with pytest.raises(ValueError, match="no 'dev' split; it has \\['test', 'train', 'validation'\\]"):
    pipeline.get_dataset("synthetic_copy", LENGTHS, "dev", shuffle=False, seed=None)


def test_unprepared_tfds_dataset_says_how_to_build_it():
  with unprepared_tfds() as empty, using_test_vocabulary():
    with pytest.raises(FileNotFoundError) as error:
      pipeline.get_dataset("super_glue_rte_v102", LENGTHS, "train", shuffle=False, seed=None)
  message = str(error.value)
  assert "\n" not in message
  assert f"tfds build super_glue/rte --data_dir={empty}" in message and "--tfds_data_dir" in message


def test_tfds_data_dir_must_exist(tmp_path):
  with pytest.raises(FileNotFoundError, match="--tfds_data_dir .*nowhere is not a directory"):
    pipeline.set_tfds_data_dir(str(tmp_path / "nowhere"))


def test_task_vocabulary_follows_gin_binding():
  with using_test_vocabulary() as path:
    task = tasks.get_mixture_or_task("super_glue_rte_v102")
    resolved = task.output_features["targets"].vocabulary
    size = spm.SentencePieceProcessor(model_file=path).get_piece_size()
    assert resolved.vocab_size == size + TEST_EXTRA_IDS
    assert resolved.decode(resolved.encode("premise")) == "premise"


def test_missing_vocabulary_file_is_named_when_first_used(tmp_path):
  missing = str(tmp_path / "nope.model")
  with gin.unlock_config():
    gin.bind_parameter("t5_vocabulary.sentencepiece_model_file", missing)
  try:
    with pytest.raises(FileNotFoundError, match=f"SentencePiece model {missing} does not exist; set t5_vocabulary"
                       ) as error:
      _ = vocab.TASK_VOCABULARY.vocab_size
    assert "\n" not in str(error.value)  # raised outside gin's call wrapper, which would append a line
  finally:
    gin.clear_config()


def test_default_task_vocabulary_is_t5s_public_model_resolved_only_on_use():
  task = tasks.get_mixture_or_task("super_glue_boolq_v102")
  assert isinstance(task.output_features["inputs"].vocabulary, vocab.DeferredVocabulary)
  default = vocab.t5_vocabulary()  # seqio reads the model lazily: no gs:// access here either
  assert (default.sentencepiece_model_file, default.extra_ids) == (vocab.T5_SPM_PATH, 100)
