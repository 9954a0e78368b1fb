"""Prompt ensembles (Lester et al. 2021, section 6): K prompts for one task, one batched pass, one answer.

The K prompts sit in the predictor's bank, so K x batch rows (prompt-major: prompt k's copy of example b is row
k * batch + b) go through one encoder pass and one decode. Answers are combined by

- majority vote over the decoded strings (the paper). Ties: among the most frequent answers, the one given by
  the earliest prompt in the ensemble's order wins; so an ensemble of one prompt, or of K copies of one prompt,
  answers exactly as that prompt does.
- mean log-likelihood under rank classification: each candidate's score averaged over the K prompts, the best
  mean wins; ties go to the earliest candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prompt_tuning_jax.inference.predictor import Prediction, Predictor


def check_prompts(prompts: Sequence[str]) -> list[str]:
  """The ensemble's K prompt names as a list; K < 1 or a repeated name is a ValueError naming the fix."""
  if isinstance(prompts, str):
    prompts = [p for p in prompts.split(",") if p]
  prompts = list(prompts)
  if len(prompts) < 1:
    raise ValueError("an ensemble needs K >= 1 prompts, got none; pass at least one prompt name")
  if len(set(prompts)) != len(prompts):
    raise ValueError(f"ensemble prompts {prompts} repeat a name; list each bank prompt once")
  return prompts


def majority_vote(answers: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
  """Combines K prompts' answers per example.

  Args:
    answers: [K][batch] strings, answers[k][b] is prompt k's answer to example b.

  Returns:
    (winners [batch], votes [batch]: how many of the K prompts gave the winner). Ties: the earliest prompt's
    answer among the most voted.
  """
  if len(answers) < 1:
    raise ValueError("majority_vote needs answers from K >= 1 prompts")
  batch = len(answers[0])
  if any(len(a) != batch for a in answers):
    raise ValueError(f"every prompt must answer all {batch} examples; got {[len(a) for a in answers]}")
  winners, votes = [], []
  for b in range(batch):
    column = [a[b] for a in answers]
    counts: dict[str, int] = {}
    for answer in column:  # dicts keep insertion order: the first prompt to give an answer comes first
      counts[answer] = counts.get(answer, 0) + 1
    best = max(counts.values())
    winners.append(next(answer for answer in column if counts[answer] == best))
    votes.append(best)
  return winners, votes


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
  """Per-prompt answers and the combined one.

  Attributes:
    prompts: the K prompt names, in ensemble order.
    per_prompt: [K][batch] each prompt's answer (decoded text, or the chosen candidate).
    answers: [batch] the ensemble's answer.
    votes: [batch] prompts that gave the ensemble's answer (majority vote) or None (rank classification).
    scores: [K, batch, candidates] log-likelihoods (rank classification) or None.
  """

  prompts: tuple[str, ...]
  per_prompt: tuple[tuple[str, ...], ...]
  answers: tuple[str, ...]
  votes: tuple[int, ...] | None = None
  scores: np.ndarray | None = None


def _rows(inputs: Sequence[Any], prompts: Sequence[str]) -> tuple[list[Any], list[str]]:
  """K x batch rows, prompt-major, with each row's prompt name."""
  return [x for _ in prompts for x in inputs], [p for p in prompts for _ in inputs]


def ensemble_predict(predictor: Predictor, inputs: Sequence[Any], prompts: Sequence[str],
                     **predict_options: Any) -> EnsembleResult:
  """Decodes every input with each of the K `prompts` in one batched pass and majority-votes the strings.

  `predict_options` go to `Predictor.predict` (max_decode_length, method, ...). With the predictor's
  batch_size >= K x len(inputs) it is a single encoder pass and a single decode.
  """
  prompts = check_prompts(prompts)
  rows, names = _rows(inputs, prompts)
  predictions: list[Prediction] = predictor.predict(rows, names, **predict_options)
  texts = [p.prediction if p.prediction is not None else " ".join(map(str, p.tokens)) for p in predictions]
  per_prompt = [tuple(texts[k * len(inputs):(k + 1) * len(inputs)]) for k in range(len(prompts))]
  winners, votes = majority_vote(per_prompt)
  return EnsembleResult(tuple(prompts), tuple(per_prompt), tuple(winners), tuple(votes))


def ensemble_rank_classify(predictor: Predictor, inputs: Sequence[Any], candidates: Sequence[str],
                           prompts: Sequence[str]) -> EnsembleResult:
  """Scores every candidate under each of the K prompts (one pass) and picks the best mean log-likelihood."""
  prompts = check_prompts(prompts)
  rows, names = _rows(inputs, prompts)
  choices, scores = predictor.rank_classify(rows, candidates, names)
  scores = scores.reshape(len(prompts), len(inputs), len(candidates))  # [K, batch, candidates]
  per_prompt = tuple(tuple(candidates[c] for c in row) for row in choices.reshape(len(prompts), len(inputs)))
  mean = scores.mean(axis=0)  # [batch, candidates]
  answers = tuple(candidates[c] for c in np.argmax(mean, axis=-1))  # argmax: the first of equal means
  return EnsembleResult(tuple(prompts), per_prompt, answers, scores=scores)


def concatenate(results: Sequence[EnsembleResult]) -> EnsembleResult:
  """One result for consecutive batches of the same ensemble (majority vote or rank classification)."""
  if not results:
    raise ValueError("no ensemble results to concatenate")
  prompts = results[0].prompts
  per_prompt = tuple(tuple(a for r in results for a in r.per_prompt[k]) for k in range(len(prompts)))
  answers = tuple(a for r in results for a in r.answers)
  votes = None if results[0].votes is None else tuple(v for r in results for v in r.votes)
  scores = None if results[0].scores is None else np.concatenate([r.scores for r in results], axis=1)
  return EnsembleResult(prompts, per_prompt, answers, votes, scores)


def exact_match(answers: Sequence[str], targets: Sequence[str]) -> float:
  """Percentage of answers equal to their targets."""
  if len(answers) != len(targets):
    raise ValueError(f"{len(answers)} answers for {len(targets)} targets")
  return 100.0 * float(np.mean([a == t for a, t in zip(answers, targets, strict=True)])) if targets else 0.0


def ensemble_metrics(result: EnsembleResult, targets: Sequence[str]) -> dict[str, float]:
  """Exact match of each prompt, their mean and best, and the ensemble's (the paper's Table 3 rows)."""
  metrics = {name: exact_match(answers, targets) for name, answers in zip(result.prompts, result.per_prompt,
                                                                           strict=True)}
  values = list(metrics.values())
  return {**metrics, "mean": float(np.mean(values)), "best": float(np.max(values)),
          "ensemble": exact_match(result.answers, targets)}


def format_ensemble_table(metrics: Mapping[str, float], prompts: Sequence[str],
                          metric: str = "exact match") -> list[str]:
  """Table 3's layout: one line per prompt, then their mean and best, then the ensemble."""
  width = max(len(name) for name in [*prompts, "ensemble (vote)"])
  lines = [f"{'prompt':{width}s}  {metric:>12s}", "-" * (width + 14)]
  lines += [f"{name:{width}s}  {metrics[name]:11.1f}%" for name in prompts]
  lines += [f"{'mean':{width}s}  {metrics['mean']:11.1f}%", f"{'best':{width}s}  {metrics['best']:11.1f}%",
            f"{'ensemble':{width}s}  {metrics['ensemble']:11.1f}%"]
  return lines
