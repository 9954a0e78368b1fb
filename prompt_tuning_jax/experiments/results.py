"""A sweep's results table: per cell, the reported metric at the best checkpoint, steps, time, parameters.

The trainer keeps the checkpoint with the best `runs.train.best_metric` (default validation/loss, the paper's
early stopping) and logs every evaluation to MODEL_DIR/metrics.jsonl; the table reads the same evaluations:
the best step is the evaluated step with the best `best_metric` (the earliest among equals), and the reported
metric (e.g. validation/<task>/sequence_accuracy) is read at that step.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prompt_tuning_jax.experiments import grid as grid_lib
from prompt_tuning_jax.experiments import runner
from prompt_tuning_jax.training.metrics_writer import read_metrics

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
COLUMNS = ("cell", "model", "prompt_length", "init", "seed", "status", "metric", "value", "best_metric",
           "best_value", "best_step", "steps", "steps_to_target", "seconds", "trainable_parameters",
           "total_parameters")


def split_metric(name: str) -> tuple[str, str]:
  """'validation/loss' -> ('validation', 'loss'); 'validation/<task>/acc' -> ('validation', '<task>/acc')."""
  split, sep, key = name.partition("/")
  if not sep or not key:
    raise ValueError(f"metric {name!r} is not '<split>/<name>', e.g. 'validation/loss'")
  return split, key


def is_better(a: float, b: float, mode: str) -> bool:
  return a < b if mode == "min" else a > b


def evaluations(model_dir: str, metric: str) -> list[tuple[int, dict[str, Any]]]:
  """[(step, metrics)] of the evaluations in MODEL_DIR/metrics.jsonl of `metric`'s split, by step."""
  split, _ = split_metric(metric)
  return [(e["step"], e) for e in read_metrics(model_dir) if e["split"] == split]


def best_evaluation(model_dir: str, best_metric: str, best_mode: str) -> tuple[int, dict[str, Any]] | None:
  """The evaluation with the best `best_metric` (the earliest among equals), or None if none was logged."""
  _, key = split_metric(best_metric)
  best = None
  for step, entry in evaluations(model_dir, best_metric):
    value = entry.get(key)
    if isinstance(value, (int, float)) and math.isfinite(value):
      if best is None or is_better(value, best[1][key], best_mode):
        best = (step, entry)
  return best


def steps_to_reach(model_dir: str, metric: str, target: float, mode: str) -> int | None:
  """The first evaluated step whose `metric` reaches `target` (>= for mode 'max', <= for 'min'), or None."""
  _, key = split_metric(metric)
  for step, entry in evaluations(model_dir, metric):
    value = entry.get(key)
    if isinstance(value, (int, float)) and (value >= target if mode == "max" else value <= target):
      return step
  return None


def cell_row(sweep_dir: str, cell: grid_lib.Cell, metric: str | None, mode: str,
             target: float | None = None) -> dict[str, Any] | None:
  """The table row of one cell (None if it never started); `metric` None reports the cell's best_metric."""
  status = runner.read_cell_status(sweep_dir, cell)
  if status is None:
    return None
  model_dir = runner.cell_dir(sweep_dir, cell)
  metric = metric or status["best_metric"]
  best = best_evaluation(model_dir, status["best_metric"], status["best_mode"])
  train_steps = [e["step"] for e in read_metrics(model_dir) if e["split"] == "train"]
  row = {"cell": cell.name, **dataclasses.asdict(cell), "status": status["status"], "metric": metric,
         "value": None, "best_metric": status["best_metric"], "best_value": None, "best_step": None,
         "steps": max(train_steps, default=0), "steps_to_target": None,
         "seconds": round(status["seconds"], 1), "trainable_parameters": status["trainable_parameters"],
         "total_parameters": status["total_parameters"]}
  if best is not None:
    step, entry = best
    row.update(best_step=step, best_value=entry[split_metric(status["best_metric"])[1]],
               value=entry.get(split_metric(metric)[1]))
  if target is not None:
    row["steps_to_target"] = steps_to_reach(model_dir, metric, target, mode)
  return row


def collect(sweep_dir: str, cells: Sequence[grid_lib.Cell], metric: str | None, mode: str = "max",
            target: float | None = None) -> list[dict[str, Any]]:
  """The rows of the cells that have started, in grid order."""
  rows = [cell_row(sweep_dir, cell, metric, mode, target) for cell in cells]
  return [row for row in rows if row is not None]


def values_by(rows: Sequence[Mapping[str, Any]], *fields: str, **match: Any) -> dict[tuple, list[float]]:
  """The finished rows' values grouped by `fields`, in row order: values_by(rows, "init", "prompt_length") ->
  {("uniform", 20): [seed 0's, seed 1's], ...}; only rows whose `match` fields have the given values."""
  groups: dict[tuple, list[float]] = {}
  for row in rows:
    if row["status"] == "done" and row["value"] is not None and all(row[k] == v for k, v in match.items()):
      groups.setdefault(tuple(row[f] for f in fields), []).append(row["value"])
  return groups


def by_length(rows: Sequence[Mapping[str, Any]], lengths: Sequence[int]) -> list[dict[str, Any]]:
  """The table of the length plot: per (model, initializer), per prompt length, 'mean (min-max)' of the
  finished seeds' values ('-' where none finished)."""
  values = values_by(rows, "model", "init", "prompt_length")
  table = []
  for model, init in dict.fromkeys((model, init) for model, init, _ in values):
    entry: dict[str, Any] = {"model": model, "init": init}
    for length in lengths:
      v = values.get((model, init, length))
      entry[f"L{length}"] = f"{np.mean(v):.1f} ({min(v):.0f}-{max(v):.0f})" if v else None
    table.append(entry)
  return table


TARGET_COLUMNS = ("model", "init", "prompt_length", "reached", "mean_steps_to_target", "steps_to_target")


def steps_to_target_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per (model, initializer, length): how many finished seeds reached the target, their mean steps to it, and
  each seed's (None: never within TRAIN_STEPS) — e.g. prompt transfer against a fresh initialization."""
  groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
  for row in rows:
    if row["status"] == "done":
      groups.setdefault((row["model"], row["init"], row["prompt_length"]), []).append(row)
  summary = []
  for (model, init, length), members in groups.items():
    reached = [r["steps_to_target"] for r in members if r["steps_to_target"] is not None]
    summary.append({"model": model, "init": init, "prompt_length": length,
                    "reached": f"{len(reached)}/{len(members)}",
                    "mean_steps_to_target": float(sum(reached) / len(reached)) if reached else None,
                    "steps_to_target": " ".join(str(r["steps_to_target"]) for r in members)})
  return summary


def write_csv(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)
  return path


def _format(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.2f}"
  return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
  """Rows as aligned text columns (the README and the terminal show this)."""
  cells = [[str(c) for c in columns]] + [[_format(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
  lines = ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
  return [lines[0], "-" * len(lines[0]), *lines[1:]]
