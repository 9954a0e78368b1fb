"""Synthetic tasks: deterministic, disjoint splits, correct targets, prefixed/taskless pairs, packaged vocab."""

import importlib.util
import os

import gin
import pytest
import sentencepiece as spm
import tensorflow_datasets as tfds

from prompt_tuning_jax.data import pipeline, synthetic, tasks, vocab

LENGTHS = {"inputs": 16, "targets": 12}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generation_is_a_function_of_the_seed():
  a = synthetic.generate_examples("reverse", "train", 50, seed=3)
  assert a == synthetic.generate_examples.__wrapped__("reverse", "train", 50, seed=3)
  assert a != synthetic.generate_examples("reverse", "train", 50, seed=4)


def test_splits_are_disjoint_across_all_tasks():
  inputs = {split: set() for split in synthetic.SPLITS}
  for task in synthetic.TARGET_FNS:
    for split, n in (("train", 3000), ("validation", 300), ("test", 300)):
      inputs[split] |= set(synthetic.generate_examples(task, split, n)["inputs"])
  assert not inputs["train"] & inputs["validation"]
  assert not inputs["train"] & inputs["test"]
  assert not inputs["validation"] & inputs["test"]


def test_inputs_use_the_alphabet_within_the_length_bounds():
  for text in synthetic.generate_examples("copy", "train", 500, min_length=2, max_length=5)["inputs"]:
    letters = text.split()
    assert 2 <= len(letters) <= 5 and set(letters) <= set(synthetic.ALPHABET)


@pytest.mark.parametrize("task,target", [("copy", "k d a f"), ("reverse", "f a d k"), ("sort", "a d f k"),
                                         ("last", "f"), ("count", "4"), ("majority", "red")])
def test_targets_by_hand(task, target):
  # a, d, f are red (first half of the alphabet), k is blue.
  assert synthetic.TARGET_FNS[task]("k d a f".split()) == target


def test_majority_ties_on_equal_halves():
  assert synthetic.TARGET_FNS["majority"]("a k".split()) == "tie"
  assert synthetic.TARGET_FNS["majority"]("k l a".split()) == "blue"


def test_generated_targets_match_the_task_function():
  examples = synthetic.generate_examples("sort", "validation", 20)
  for inputs, targets in zip(examples["inputs"], examples["targets"], strict=True):
    assert targets == " ".join(sorted(inputs.split()))


def test_prefixed_and_taskless_tasks_share_examples_and_differ_by_prefix():
  prefixed = list(tfds.as_numpy(pipeline.get_task_dataset("synthetic_reverse", LENGTHS, "validation")))
  taskless = list(tfds.as_numpy(pipeline.get_task_dataset("taskless_synthetic_reverse", LENGTHS, "validation")))
  assert len(prefixed) == len(taskless) == synthetic.SyntheticConfig().validation_size
  for p, t in zip(prefixed, taskless, strict=True):
    assert p["inputs_pretokenized"] == b"reverse: " + t["inputs_pretokenized"]
    assert p["targets_pretokenized"] == t["targets_pretokenized"]
    assert p["inputs"][-len(t["inputs"]):].tolist() == t["inputs"].tolist()


def test_split_sizes_come_from_gin():
  with gin.unlock_config():
    gin.bind_parameter("SyntheticConfig.validation_size", 7)
  try:
    assert len(list(pipeline.get_task_dataset("synthetic_count", LENGTHS, "validation"))) == 7
  finally:
    gin.clear_config()


def test_same_shuffle_seed_gives_same_order():
  def first_targets(seed):
    ds = pipeline.get_dataset("synthetic_copy", LENGTHS, "train", shuffle=True, seed=seed, num_epochs=1)
    return [ex["decoder_target_tokens"].tolist() for ex in tfds.as_numpy(ds.take(5))]
  with gin.unlock_config():
    gin.bind_parameter("SyntheticConfig.train_size", 300)
  try:
    assert first_targets(1) == first_targets(1)
    assert first_targets(1) != first_targets(2)
  finally:
    gin.clear_config()


def test_majority_exposes_class_labels_and_sequence_tasks_none():
  assert tasks.get_class_labels("synthetic_majority") == ["red", "blue", "tie"]
  assert tasks.get_class_labels("taskless_synthetic_majority") == ["red", "blue", "tie"]
  assert tasks.get_class_labels("synthetic_reverse") is None


def test_metrics_per_task():
  names = lambda task: {getattr(fn, "__name__", "") for fn in tasks.get_mixture_or_task(task).predict_metric_fns}
  assert names("synthetic_reverse") == {"sequence_accuracy", "token_accuracy"}
  assert names("synthetic_count") == {"sequence_accuracy"}
  assert names("synthetic_majority") == {"sequence_accuracy", "per_class_fn"}


def test_packaged_vocabulary_has_t5_special_ids_and_whole_word_pieces():
  processor = spm.SentencePieceProcessor(model_file=vocab.SYNTHETIC_SPM_PATH)
  assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (0, 1, 2, -1)
  for word in [*synthetic.ALPHABET, *synthetic.MAJORITY_LABELS, *synthetic.TARGET_FNS, "0", "9"]:
    assert len(processor.encode(word)) == 1, word


def test_synthetic_vocab_size_and_its_padded_model_size():
  size = vocab.synthetic_vocab_size()
  assert size == spm.SentencePieceProcessor(model_file=vocab.SYNTHETIC_SPM_PATH).get_piece_size()
  assert vocab.padded_vocab_size(vocab.synthetic_vocabulary()) == 128 * -(-size // 128)


def test_build_script_reproduces_the_packaged_model_byte_for_byte():
  spec = importlib.util.spec_from_file_location("build_demo_vocab",
                                                os.path.join(REPO, "scripts", "build_demo_vocab.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  with open(vocab.SYNTHETIC_SPM_PATH, "rb") as f:
    assert script.train(script.corpus()) == f.read()
