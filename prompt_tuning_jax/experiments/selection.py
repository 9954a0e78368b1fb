"""Choosing the prompt length: the best by the metric alone, and with an efficiency penalty, side by side.

The penalized score of length L is  score x (1 - w x L / max_length)  for a metric where higher is better
(max_length: the grid's longest prompt; w: the penalty weight, 0.1 by default), so a longer prompt must win
by more than its extra cost; for a lower-is-better metric (a loss) it is  score x (1 + w x L / max_length).
Scores are the mean over seeds of the finished cells of each (model, initializer, length).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prompt_tuning_jax.experiments import results

DEFAULT_PENALTY = 0.1
COLUMNS = ("model", "init", "best_length", "best_score", "penalized_length", "penalized_length_score",
           "penalized_score")


def penalized(score: float, length: int, max_length: int, weight: float, mode: str = "max") -> float:
  """score x (1 - weight x length / max_length), or x (1 + ...) when lower is better (mode 'min')."""
  factor = weight * length / max_length
  return score * (1 - factor) if mode == "max" else score * (1 + factor)


def mean_scores(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[int, float]]:
  """{(model, init): {length: mean over seeds of `value`}, lengths ascending} over the finished rows."""
  means: dict[tuple[str, str], dict[int, float]] = {}
  for (model, init, length), values in results.values_by(rows, "model", "init", "prompt_length").items():
    means.setdefault((model, init), {})[length] = float(np.mean(values))
  return {group: dict(sorted(by_length.items())) for group, by_length in means.items()}


def select_lengths(rows: Sequence[Mapping[str, Any]], max_length: int, weight: float = DEFAULT_PENALTY,
                   mode: str = "max") -> list[dict[str, Any]]:
  """Per (model, initializer): the best length by the mean metric and by the penalized score.

  Ties go to the shorter prompt. Returns rows keyed by `COLUMNS`, plus "scores": {length: [mean, penalized]}.
  """
  if weight < 0:
    raise ValueError(f"--length_penalty must be at least 0, got {weight}")
  better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
  selected = []
  for (model, init), by_length in mean_scores(rows).items():
    scores = {length: (score, penalized(score, length, max_length, weight, mode))
              for length, score in by_length.items()}
    best = plain = None
    for length, (score, score_penalized) in scores.items():  # ascending length: ties keep the shorter
      if plain is None or better(score, scores[plain][0]):
        plain = length
      if best is None or better(score_penalized, scores[best][1]):
        best = length
    selected.append({"model": model, "init": init, "best_length": plain, "best_score": scores[plain][0],
                     "penalized_length": best, "penalized_length_score": scores[best][0],
                     "penalized_score": scores[best][1],
                     "scores": {str(k): list(v) for k, v in scores.items()}})
  return selected
