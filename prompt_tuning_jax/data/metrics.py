"""Metrics as the SuperGLUE leaderboard and the summarization literature define them, on a 0-100 scale.

Every metric is a seqio "predict" metric: `fn(targets, predictions) -> {name: value}` over postprocessed
values (see postprocessors.py): class ids for classification (-1 = the model produced no valid label,
which counts as wrong), dicts with a "group" for MultiRC and ReCoRD, strings for generation.
"""

import collections
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import sacrebleu
import sklearn.metrics
from absl import logging
from rouge_score import rouge_scorer

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  return {"accuracy": 100 * sklearn.metrics.accuracy_score(targets, predictions)}


def f1_macro(num_classes: int) -> MetricFn:
  """Unweighted mean of the per-class F1 over classes 0..num_classes-1 (CommitmentBank's F1)."""

  def f1_macro_fn(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    f1 = sklearn.metrics.f1_score(targets, predictions, labels=list(range(num_classes)), average="macro",
                                  zero_division=0)
    return {"f1_macro": 100 * f1}

  return f1_macro_fn


def multirc_f1a(targets: Sequence[Mapping[str, Any]],
                predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC F1a: binary F1 of the "True" class over all answer options, invalid predictions wrong."""
  t = np.asarray([x["value"] for x in targets])
  p = np.asarray([x["value"] for x in predictions])
  # A prediction that is neither label is wrong whatever the target, so flip it to the opposite class.
  p = np.where((p == 0) | (p == 1), p, 1 - t)
  return {"f1a": 100 * sklearn.metrics.f1_score(t, p, zero_division=0)}


def multirc_exact_match(targets: Sequence[Mapping[str, Any]],
                        predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC EM: the fraction of questions whose answer options are all labeled correctly."""
  correct_by_question: dict[Any, bool] = {}
  for t, p in zip(targets, predictions, strict=True):
    group = t["group"]
    correct_by_question[group] = correct_by_question.get(group, True) and t["value"] == p["value"]
  return {"exact_match": 100 * float(np.mean(list(correct_by_question.values())))}


def normalize_squad(text: str) -> str:
  """The SQuAD v1.1 / ReCoRD answer normalization: lower case, no punctuation, articles or extra spaces."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  prediction_tokens, target_tokens = prediction.split(), target.split()
  common = collections.Counter(prediction_tokens) & collections.Counter(target_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision, recall = num_same / len(prediction_tokens), num_same / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def record_em_f1(targets: Sequence[Mapping[str, Any]],
                 predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """ReCoRD exact match and token F1, each the max over the gold answers, one score per query.

  Queries with several answers appear once per answer in the task, so only the first prediction of each
  (passage, query) group is scored.
  """
  seen: set[Any] = set()
  em, f1 = [], []
  for t, p in zip(targets, predictions, strict=True):
    if t["group"] in seen:
      continue
    seen.add(t["group"])
    golds = [normalize_squad(a) for a in t["value"]]
    prediction = normalize_squad(p["value"])
    em.append(max(float(g == prediction) for g in golds))
    f1.append(max(_token_f1(g, prediction) for g in golds))
  return {"em": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Matthews correlation (AX-b's leaderboard metric)."""
  return {"matthews_corrcoef": 100 * sklearn.metrics.matthews_corrcoef(targets, predictions)}


def labeled_only(metric_fn: MetricFn) -> MetricFn:
  """`metric_fn` over the examples whose target class id is not -1 (TFDS's "no label")."""

  def labeled_fn(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    pairs = [(t, p) for t, p in zip(targets, predictions, strict=True) if t != -1]
    if not pairs:
      logging.warning("no labeled targets among %d examples: %s not computed (submit the predictions "
                      "to the leaderboard instead)", len(targets), getattr(metric_fn, "__name__", metric_fn))
      return {}
    return metric_fn([t for t, _ in pairs], [p for _, p in pairs])

  labeled_fn.__name__ = getattr(metric_fn, "__name__", "labeled_fn")
  return labeled_fn


def _sentence_per_line(text: str) -> str:
  # ROUGE-Lsum compares sentence by sentence and reads sentences as lines.
  return re.sub(r"([.!?])\s+", "\\1\n", text.strip())


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measure, Porter-stemmed, as rouge-score computes them."""
  keys = ("rouge1", "rouge2", "rougeLsum")
  scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
  totals = dict.fromkeys(keys, 0.0)
  for t, p in zip(targets, predictions, strict=True):
    scores = scorer.score(target=_sentence_per_line(t), prediction=_sentence_per_line(p))
    for key in keys:
      totals[key] += scores[key].fmeasure
  return {key: 100 * totals[key] / max(len(targets), 1) for key in keys}


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU as sacrebleu reports it: n-gram counts summed over all examples (not a mean of sentence
  BLEUs), up to 4-grams, brevity penalty over the corpus, sacrebleu's default '13a' tokenization, one
  reference per example, case-sensitive."""
  if not targets:
    return {}
  return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score)}


def sequence_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """The fraction of predictions that equal their target exactly."""
  matches = [t == p for t, p in zip(targets, predictions, strict=True)]
  return {"sequence_accuracy": 100 * float(np.mean(matches))}


def token_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Position-wise accuracy over whitespace tokens; a length mismatch counts the missing tokens wrong."""
  correct, total = 0, 0
  for t, p in zip(targets, predictions, strict=True):
    t_tokens, p_tokens = t.split(), p.split()
    correct += sum(a == b for a, b in zip(t_tokens, p_tokens, strict=False))
    total += max(len(t_tokens), len(p_tokens))
  return {"token_accuracy": 100 * correct / total if total else 100.0}


def per_class_accuracy(class_labels: Sequence[str]) -> MetricFn:
  """Accuracy on the examples of each class (its recall), keyed "accuracy_<label>"."""

  def per_class_fn(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    result = {}
    for label in class_labels:
      hits = [p == label for t, p in zip(targets, predictions, strict=True) if t == label]
      if hits:  # a class absent from the targets has no accuracy
        result[f"accuracy_{label}"] = 100 * float(np.mean(hits))
    return result

  return per_class_fn


# The leaderboard score of each SuperGLUE task is the mean of these metrics.
SUPER_GLUE_SCORE_METRICS: dict[str, tuple[str, ...]] = {
    "boolq": ("accuracy",),
    "cb": ("accuracy", "f1_macro"),
    "copa": ("accuracy",),
    "multirc": ("f1a", "exact_match"),
    "record": ("f1", "em"),
    "rte": ("accuracy",),
    "wic": ("accuracy",),
    "wsc": ("accuracy",),
}


def super_glue_average(scores: Mapping[str, Mapping[str, float]]) -> float:
  """The SuperGLUE score: the mean over the eight tasks of each task's mean metric (AX-b/AX-g excluded).

  Args:
    scores: benchmark name ("boolq", "cb", ..., "wsc") -> that task's metrics as this module names them.
  """
  task_scores = []
  for benchmark, keys in SUPER_GLUE_SCORE_METRICS.items():
    if benchmark not in scores:
      raise ValueError(f"SuperGLUE average needs scores for all of {sorted(SUPER_GLUE_SCORE_METRICS)}; "
                       f"'{benchmark}' is missing from {sorted(scores)}")
    missing = [k for k in keys if k not in scores[benchmark]]
    if missing:
      raise ValueError(f"SuperGLUE average needs {list(keys)} for '{benchmark}'; found "
                       f"{sorted(scores[benchmark])}, missing {missing}")
    task_scores.append(np.mean([scores[benchmark][k] for k in keys]))
  return float(np.mean(task_scores))
