"""SuperGLUE tasks: T5 text formats on hand-made examples, and every task iterating under mocked TFDS."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from _data_helpers import mock_tfds, using_test_vocabulary

from prompt_tuning_jax.data import pipeline, preprocessors, superglue, tasks

LENGTHS = {"inputs": 64, "targets": 8}


def _tfds_name(benchmark: superglue.Benchmark) -> str:
  return f"super_glue/{benchmark.tfds_config}:{superglue.TFDS_VERSION}"


def _splits(benchmark: superglue.Benchmark) -> tuple[str, ...]:
  return benchmark.splits or ("train", "validation", "test")


ALL_SUPER_GLUE = {_tfds_name(b): _splits(b) for b in superglue.BENCHMARKS.values()}


@pytest.fixture(scope="module")
def mocked_super_glue():
  with using_test_vocabulary(), mock_tfds(ALL_SUPER_GLUE, num_examples=4):
    yield


def _text_examples(preprocessor, example: dict) -> list[dict]:
  ds = preprocessor(tf.data.Dataset.from_tensors(example))
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()} for ex in tfds.as_numpy(ds)]


def test_rte_is_t5_text_with_sorted_fields_and_label_name():
  [ex] = _text_examples(
      superglue.BENCHMARKS["rte"].text_preprocessors[0],
      {"premise": "It rains.", "hypothesis": "It is dry.", "label": np.int64(1), "idx": np.int32(5)})
  assert ex["inputs"] == "rte hypothesis: It is dry. premise: It rains."
  assert ex["targets"] == "not_entailment"
  assert ex["idx"] == 5


def test_unlabeled_example_targets_unk():
  [ex] = _text_examples(
      superglue.BENCHMARKS["boolq"].text_preprocessors[0],
      {"passage": "P", "question": "Q", "label": np.int64(-1), "idx": np.int32(0)})
  assert ex["inputs"] == "boolq passage: P question: Q"
  assert ex["targets"] == "<unk>"


def test_axb_is_cast_as_rte():
  rekey, glue = superglue.BENCHMARKS["axb"].text_preprocessors
  ds = glue(rekey(tf.data.Dataset.from_tensors(
      {"sentence1": "A man.", "sentence2": "A person.", "label": np.int64(0), "idx": np.int32(1)})))
  [ex] = tfds.as_numpy(ds)
  assert ex["inputs"].decode() == "rte hypothesis: A person. premise: A man."
  assert ex["targets"].decode() == "entailment"


def test_wsc_marks_noun_with_stars_and_pronoun_with_hashes():
  [ex] = _text_examples(preprocessors.wsc, {
      "text": "This is a test sentence .", "span1_text": "test", "span1_index": np.int32(3),
      "span2_text": "This", "span2_index": np.int32(0), "label": np.int64(0), "idx": np.int32(0)})
  assert ex["inputs"] == "wsc text: # This # is a * test * sentence ."
  assert ex["targets"] == "False"


def test_wsc_shifts_pronoun_after_marked_noun_and_escapes_regex_characters():
  [ex] = _text_examples(preprocessors.wsc, {
      "text": "Mr. (Bob) said he was late .", "span1_text": "(Bob)", "span1_index": np.int32(1),
      "span2_text": "he", "span2_index": np.int32(3), "label": np.int64(1), "idx": np.int32(0)})
  assert ex["inputs"] == "wsc text: Mr. * (Bob) * said # he # was late ."
  assert ex["targets"] == "True"


def test_multirc_strips_html_and_keeps_question_ids():
  [ex] = _text_examples(preprocessors.multirc, {
      "question": "Who?", "answer": "Bob", "paragraph": "<b>Sent 1: </b>Bob ran.<br>",
      "idx": {"paragraph": np.int32(2), "question": np.int32(3), "answer": np.int32(4)}, "label": np.int64(1)})
  assert ex["inputs"] == "multirc question: Who? answer: Bob paragraph: Sent 1: Bob ran. "
  assert ex["targets"] == "True"
  assert (ex["idx/paragraph"], ex["idx/question"], ex["idx/answer"]) == (2, 3, 4)


def test_record_makes_one_example_per_gold_answer():
  examples = _text_examples(preprocessors.record, {
      "passage": "Obama spoke.\n@highlight\nHe left\n@highlight\nEnd", "query": "@placeholder spoke.",
      "entities": ["Obama", "He"], "answers": ["Obama", "Barack Obama"],
      "idx": {"passage": np.int32(1), "query": np.int32(2)}})
  assert [ex["targets"] for ex in examples] == ["Obama", "Barack Obama"]
  assert {ex["inputs"] for ex in examples} == {
      "record query: @placeholder spoke. entities: Obama, He passage: Obama spoke. He left. End"}
  assert [list(ex["answers"]) for ex in examples] == [[b"Obama", b"Barack Obama"]] * 2
  assert [(ex["idx/passage"], ex["idx/query"]) for ex in examples] == [(1, 2), (1, 2)]


def test_record_without_answers_yields_one_unk_example():
  examples = _text_examples(preprocessors.record, {
      "passage": "P", "query": "Q", "entities": ["E"], "answers": tf.constant([], tf.string),
      "idx": {"passage": np.int32(0), "query": np.int32(0)}})
  assert [ex["targets"] for ex in examples] == ["<unk>"]


def test_taskless_removes_only_the_benchmark_name():
  [ex] = _text_examples(preprocessors.remove_first_text_token,
                        {"inputs": "rte hypothesis: a premise: b", "targets": "entailment"})
  assert ex["inputs"] == "hypothesis: a premise: b"


# The text each task's inputs start with; the taskless variant starts one word later.
PREFIXES = {"boolq": "boolq passage: ", "cb": "cb hypothesis: ", "copa": "copa choice1: ",
            "multirc": "multirc question: ", "record": "record query: ", "rte": "rte hypothesis: ",
            "wic": "wic sentence1: ", "wsc_fixed": "wsc text: ", "axb": "rte hypothesis: ", "axg": "rte hypothesis: "}


@pytest.mark.parametrize("taskless", [False, True], ids=["prefixed", "taskless"])
@pytest.mark.parametrize("benchmark", sorted(superglue.BENCHMARKS))
def test_every_super_glue_task_iterates_formatted_examples(mocked_super_glue, benchmark, taskless):
  b = superglue.BENCHMARKS[benchmark]
  split = _splits(b)[0]
  name = superglue.task_name(benchmark, taskless=taskless)
  examples = list(tfds.as_numpy(pipeline.get_task_dataset(name, LENGTHS, split)))
  assert examples
  prefix = PREFIXES[benchmark].split(" ", 1)[1] if taskless else PREFIXES[benchmark]
  for ex in examples:
    assert ex["inputs_pretokenized"].decode().startswith(prefix)
    if b.label_names:
      assert ex["targets_pretokenized"].decode() in b.label_names
    for key in ("inputs", "targets"):
      assert ex[key].dtype == np.int32
      assert 1 < len(ex[key]) <= LENGTHS[key]
      assert ex[key][-1] == 1  # EOS


def test_super_glue_task_yields_padded_model_features(mocked_super_glue):
  ds = pipeline.get_dataset("super_glue_cb_v102", LENGTHS, "validation", shuffle=False, seed=None,
                            num_epochs=1)
  ex = next(iter(tfds.as_numpy(ds)))
  assert ex["encoder_input_tokens"].shape == (64,)
  assert ex["decoder_target_tokens"].shape == (8,)
  assert ex["decoder_input_tokens"][0] == 0


def test_super_glue_tasks_mix_and_each_is_drawn(mocked_super_glue):
  # Equal rates over the proportional mixture's tasks: at its real rates CB is 1 draw in 740.
  proportional = seqio.get_mixture_or_task(superglue.MIXTURE_NAME)
  mixture = seqio.Mixture("equal_rate_super_glue", [t.name for t in proportional.tasks], default_rate=1.0)
  ds = mixture.get_dataset(LENGTHS, "train", shuffle=False, seed=0, copy_pretokenized=True)
  first_words = {ex["inputs_pretokenized"].split(b" ", 1)[0].decode() for ex in tfds.as_numpy(ds.take(80))}
  assert first_words == {"boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"}


def test_proportional_mixture_yields_model_features(mocked_super_glue):
  ds = pipeline.get_dataset(superglue.MIXTURE_NAME, LENGTHS, "train", shuffle=False, seed=0)
  for ex in tfds.as_numpy(ds.take(3)):
    assert ex["encoder_input_tokens"].shape == (64,) and ex["decoder_target_tokens"].shape == (8,)


def test_proportional_mixture_rates_are_training_set_sizes():
  mixture = seqio.get_mixture_or_task(superglue.MIXTURE_NAME)
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == {superglue.task_name(b.name): float(b.num_train_examples)
                   for b in superglue.BENCHMARKS.values() if b.num_train_examples}


def test_multirc_and_record_score_perfect_predictions_as_100(mocked_super_glue):
  for name in ("super_glue_multirc_v102", "super_glue_record_v102"):
    examples = list(tfds.as_numpy(pipeline.get_task_dataset(name, LENGTHS, "validation")))
    predictions = [ex["targets_pretokenized"].decode() for ex in examples]
    scores = pipeline.compute_metrics(name, examples, predictions)
    assert scores and all(v == pytest.approx(100.0) for v in scores.values()), (name, scores)


def test_class_labels_follow_tfds_label_order():
  assert tasks.get_class_labels("super_glue_cb_v102") == ["entailment", "contradiction", "neutral"]
  assert tasks.get_class_labels("taskless_super_glue_rte_v102") == ["entailment", "not_entailment"]
  assert tasks.get_class_labels("super_glue_record_v102") is None


def test_leaderboard_score_accepts_taskless_task_names():
  metrics_by_task = {
      superglue.task_name(b, taskless=True): {"accuracy": 50.0, "f1_macro": 50.0, "f1a": 50.0,
                                               "exact_match": 50.0, "f1": 50.0, "em": 50.0}
      for b in superglue.LEADERBOARD_NAMES}
  assert superglue.leaderboard_score(metrics_by_task) == pytest.approx(50.0)
  del metrics_by_task["taskless_super_glue_wic_v102"]
  with pytest.raises(ValueError, match="super_glue_wic_v102"):
    superglue.leaderboard_score(metrics_by_task)
