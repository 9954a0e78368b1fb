"""Metrics and postprocessors against values computed by hand."""

import math

import pytest
import sacrebleu

from prompt_tuning_jax.data import metrics, postprocessors


def test_accuracy_counts_invalid_predictions_wrong():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, -1, 0]) == {"accuracy": pytest.approx(75.0)}


def test_cb_macro_f1_averages_per_class_f1():
  # class 0: P 1/2, R 1/2 -> 1/2; class 1: P 1/2, R 1 -> 2/3; class 2: P 1, R 2/3 -> 4/5.
  targets = [0, 0, 1, 2, 2, 2]
  predictions = [0, 1, 1, 2, 2, 0]
  f1 = metrics.f1_macro(num_classes=3)(targets, predictions)["f1_macro"]
  assert f1 == pytest.approx(100 * (1 / 2 + 2 / 3 + 4 / 5) / 3)


def test_cb_macro_f1_counts_invalid_prediction_against_its_class():
  # class 1 is never predicted validly: F1 0; classes 0 and 2 are perfect.
  assert metrics.f1_macro(num_classes=3)([0, 1, 2], [0, -1, 2])["f1_macro"] == pytest.approx(200 / 3)


def _multirc(values, groups=None):
  if groups is None:
    return [{"value": v} for v in values]
  return [{"value": v, "group": g} for v, g in zip(values, groups, strict=True)]


def test_multirc_exact_match_groups_answers_by_question_not_by_position():
  # Questions A, B, C interleaved: A all right, B one wrong, C invalid -> 1 of 3 questions exact.
  groups = [(0, "A"), (0, "B"), (0, "A"), (1, "C"), (0, "B"), (0, "A")]
  targets = _multirc([1, 0, 0, 1, 1, 1], groups)
  predictions = _multirc([1, 0, 0, -1, 0, 1])
  assert metrics.multirc_exact_match(targets, predictions)["exact_match"] == pytest.approx(100 / 3)


def test_multirc_f1a_is_binary_f1_over_all_answers_with_invalid_wrong():
  # True answers at 0, 2, 4, 5; predicted True at 0, 2; the invalid (-1) at 5 counts as a miss.
  targets = _multirc([1, 0, 1, 0, 1, 1], [(0, 0)] * 6)
  predictions = _multirc([1, 0, 1, 0, 0, -1])
  # precision 2/2, recall 2/4 -> F1 2/3.
  assert metrics.multirc_f1a(targets, predictions)["f1a"] == pytest.approx(200 / 3)


def test_multirc_f1a_counts_invalid_prediction_on_false_answer_as_false_positive():
  targets = _multirc([1, 0], [(0, 0)] * 2)
  predictions = _multirc([1, -1])
  # precision 1/2, recall 1 -> F1 2/3.
  assert metrics.multirc_f1a(targets, predictions)["f1a"] == pytest.approx(200 / 3)


def test_record_takes_max_over_gold_answers_and_scores_each_query_once():
  targets = [
      {"value": ["Barack Obama", "Obama"], "group": (0, 0)},
      {"value": ["the White House"], "group": (0, 1)},
      {"value": ["the White House"], "group": (0, 1)},  # a duplicate of the query above
      {"value": ["Paris", "France"], "group": (1, 0)},
  ]
  predictions = [{"value": "obama."}, {"value": "White House in DC"}, {"value": "White House"},
                 {"value": "Lyon France"}]
  scores = metrics.record_em_f1(targets, predictions)
  # EM: 1, 0 (the duplicate's exact answer is ignored), 0.  F1: 1, 2*(1/2*1)/(3/2) = 2/3, best gold 2/3.
  assert scores["em"] == pytest.approx(100 / 3)
  assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)


def test_squad_normalization_drops_case_punctuation_and_articles():
  assert metrics.normalize_squad("  The  U.S. Army, an army!") == "us army army"


def test_matthews_corrcoef_by_hand():
  # TP 1, TN 2, FP 0, FN 1 -> (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3).
  assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0])["matthews_corrcoef"] == pytest.approx(
      100 * 2 / 12**0.5)


def test_labeled_only_skips_unlabeled_targets():
  assert metrics.labeled_only(metrics.accuracy)([1, -1, 0], [1, 0, 1]) == {"accuracy": pytest.approx(50.0)}


def test_labeled_only_returns_nothing_when_no_target_is_labeled():
  assert metrics.labeled_only(metrics.accuracy)([-1, -1], [0, 1]) == {}


def test_rouge_unigram_bigram_and_lsum_by_hand():
  scores = metrics.rouge(["the cat sat"], ["the cat ran"])
  assert scores["rouge1"] == pytest.approx(200 / 3)  # 2 of 3 unigrams both ways
  assert scores["rouge2"] == pytest.approx(50.0)  # "the cat" of 2 bigrams both ways
  assert scores["rougeLsum"] == pytest.approx(200 / 3)  # LCS "the cat"


def test_rouge_stems_words():
  assert metrics.rouge(["cats running"], ["cat runs"])["rouge1"] == pytest.approx(100.0)


def test_rouge_lsum_matches_sentence_by_sentence():
  # Both sentences of the target appear, in the other order: per-sentence LCS finds both, one LCS would not.
  target = "The bill funds roads. It also taxes fuel."
  prediction = "It also taxes fuel. The bill funds roads."
  assert metrics.rouge([target], [prediction])["rougeLsum"] == pytest.approx(100.0)


def test_bleu_of_one_sentence_by_hand():
  # 1..4-gram precisions 5/6 ("the" clipped to once), 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
  scores = metrics.bleu(["the cat sat on a mat"], ["the cat sat on the mat"])
  assert scores == {"bleu": pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)}


def test_bleu_brevity_penalty_by_hand():
  # Every n-gram of the 4-token prediction is in the 6-token target: BLEU = BP = exp(1 - 6/4).
  scores = metrics.bleu(["the cat sat on the mat"], ["the cat sat on"])
  assert scores["bleu"] == pytest.approx(100 * math.exp(-0.5))


def test_bleu_identical_corpus_is_100_and_disjoint_is_0():
  targets = ["the bill funds roads .", "it also taxes fuel and tires ."]
  assert metrics.bleu(targets, targets)["bleu"] == pytest.approx(100.0)
  assert metrics.bleu(targets, ["no overlap here at all", "none whatsoever in this one"])["bleu"] == 0.0


def test_bleu_is_corpus_level_not_a_mean_of_sentence_scores():
  targets = ["the cat sat on a mat", "a dog ran in the park today"]
  predictions = ["the cat sat on the mat", "a dog ran in a park"]
  corpus = metrics.bleu(targets, predictions)["bleu"]
  # sacrebleu's own figure, and 1..4-gram counts summed over both sentences by hand: 10/12, 6/10, 4/8, 2/6,
  # prediction 12 tokens vs reference 13.
  assert corpus == pytest.approx(sacrebleu.corpus_bleu(predictions, [targets]).score)
  by_hand = math.exp(1 - 13 / 12) * (10 / 12 * 6 / 10 * 4 / 8 * 2 / 6) ** 0.25
  assert corpus == pytest.approx(100 * by_hand)
  sentence_mean = sum(sacrebleu.sentence_bleu(p, [t]).score
                      for t, p in zip(targets, predictions, strict=True)) / 2
  assert corpus != pytest.approx(sentence_mean)


def test_bleu_matches_sacrebleu_with_13a_tokenization_of_punctuation():
  targets = ["The Act amends the Internal Revenue Code, effective 2020.", "Funds (up to $5M) go to states."]
  predictions = ["The Act amends the Revenue Code, effective in 2020.", "Funds go to states (up to $5M)."]
  assert metrics.bleu(targets, predictions)["bleu"] == pytest.approx(
      sacrebleu.corpus_bleu(predictions, [targets], tokenize="13a").score)


def test_bleu_of_no_examples_is_absent():
  assert metrics.bleu([], []) == {}


def test_sequence_and_token_accuracy_by_hand():
  targets, predictions = ["a b c", "d e"], ["a b d", "d e f"]
  assert metrics.sequence_accuracy(targets, predictions) == {"sequence_accuracy": 0.0}
  # 2 of 3 positions, then 2 of max(2, 3) -> 4 of 6.
  assert metrics.token_accuracy(targets, predictions)["token_accuracy"] == pytest.approx(200 / 3)


def test_per_class_accuracy_is_recall_of_each_present_class():
  fn = metrics.per_class_accuracy(("red", "blue", "tie"))
  scores = fn(["red", "red", "blue", "blue"], ["red", "blue", "blue", "blue"])
  assert scores == {"accuracy_red": pytest.approx(50.0), "accuracy_blue": pytest.approx(100.0)}


def _leaderboard_scores():
  return {
      "boolq": {"accuracy": 80.0}, "cb": {"accuracy": 90.0, "f1_macro": 70.0}, "copa": {"accuracy": 60.0},
      "multirc": {"f1a": 70.0, "exact_match": 30.0}, "record": {"f1": 90.0, "em": 80.0},
      "rte": {"accuracy": 75.0}, "wic": {"accuracy": 65.0}, "wsc": {"accuracy": 65.0},
  }


def test_super_glue_average_means_each_tasks_metrics_first():
  # Task scores 80, 80, 60, 50, 85, 75, 65, 65 -> 560 / 8.
  assert metrics.super_glue_average(_leaderboard_scores()) == pytest.approx(70.0)


def test_super_glue_average_names_a_missing_task():
  scores = _leaderboard_scores()
  del scores["wic"]
  with pytest.raises(ValueError, match="'wic' is missing"):
    metrics.super_glue_average(scores)


def test_super_glue_average_names_a_missing_metric():
  scores = _leaderboard_scores()
  del scores["cb"]["f1_macro"]
  with pytest.raises(ValueError, match="missing \\['f1_macro'\\]"):
    metrics.super_glue_average(scores)


def test_label_postprocessor_maps_unknown_text_to_minus_one():
  labels = ("entailment", "not_entailment")
  assert postprocessors.string_label_to_class_id(b"not_entailment", labels) == 1
  assert postprocessors.string_label_to_class_id(" entailment ", labels) == 0
  assert postprocessors.string_label_to_class_id("maybe", labels) == -1


def test_multirc_postprocessor_adds_question_group_to_targets_only():
  example = {"idx/paragraph": 3, "idx/question": 7}
  assert postprocessors.multirc("True", example=example, is_target=True) == {"value": 1, "group": (3, 7)}
  assert postprocessors.multirc("False", example=example, is_target=False) == {"value": 0}


def test_record_postprocessor_targets_carry_every_answer():
  example = {"answers": [b"Obama", b"Barack Obama"], "idx/passage": 1, "idx/query": 2}
  assert postprocessors.record("Obama", example=example, is_target=True) == {
      "value": ["Obama", "Barack Obama"], "group": (1, 2)}
  assert postprocessors.record(" Obama ", example=example, is_target=False) == {"value": "Obama"}
