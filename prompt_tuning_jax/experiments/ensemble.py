"""Prompt ensembles from a sweep's seeds (the paper's Table 3): each seed's prompt, their mean and best, and
the ensemble that decodes every validation example with each seed's best prompt and takes the majority.

The vote is over the decoded strings, per example; a tie goes to the earliest seed (the grid's seed order)
among the tied answers, so the result is deterministic. Every seed's prompt is decoded greedily with
`inference.decoding.greedy_decode` (through `decoding.decode_examples`) on the same examples its evaluations
used (the cell's eval split and eval_num_examples), and scored by the task's own metrics.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import numpy as np
from flax import traverse_util

from prompt_tuning_jax.data import pipeline, tasks
from prompt_tuning_jax.experiments import grid as grid_lib
from prompt_tuning_jax.experiments import runner
from prompt_tuning_jax.inference.decoding import decode_examples
from prompt_tuning_jax.model import t5
from prompt_tuning_jax.training import checkpointing, runs

COLUMNS = ("model", "init", "prompt_length", "seeds", "mean", "best", "ensemble")


def majority_vote(predictions: Sequence[Sequence[str]]) -> list[str]:
  """Per example, the most frequent prediction over the members; ties go to the earliest member's.

  Args:
    predictions: [members][examples] decoded strings.
  """
  voted = []
  for answers in zip(*predictions, strict=True):
    counts = collections.Counter(answers)
    top = max(counts.values())
    voted.append(next(a for a in answers if counts[a] == top))
  return voted


def task_metric(metric: str) -> tuple[str, str]:
  """'validation/<task>/<name>' -> (task, name); raises for a teacher-forced metric (validation/loss)."""
  parts = metric.split("/")
  if len(parts) != 3:
    raise ValueError(f"an ensemble is scored by a decoded metric 'validation/<task>/<name>', not {metric!r}; "
                     "pass e.g. --metric=validation/<task>/sequence_accuracy")
  return parts[1], parts[2]


def decode_cell(grid: grid_lib.Grid, cell: grid_lib.Cell, stack: runner.Stack, sweep_dir: str,
                step: int) -> tuple[str, list[dict[str, Any]], list[str]]:
  """(task, examples, greedy predictions) of the cell's prompt at `step` on its evaluation examples."""
  runner.parse_cell_gin(grid, cell, stack, sweep_dir)
  task = runner.macro("MIXTURE_OR_TASK_NAME")
  runs.import_task_module(runner.macro("MIXTURE_OR_TASK_MODULE"))
  lengths = runner.macro("TASK_FEATURE_LENGTHS")
  split = runner.train_setting("eval_split")
  model = gin.get_configurable(t5.Transformer)()
  initial = runs.initial_params(model, lengths, runner.macro("INITIAL_CHECKPOINT_PATH"),
                                runner.macro("PROMPT_REGEX"), cell.seed)
  prompt = checkpointing.read_step_prompt(runner.cell_dir(sweep_dir, cell), step)
  params = runs.overlay_trained(initial, traverse_util.unflatten_dict({checkpointing.PROMPT_PATH: prompt}),
                                runner.cell_dir(sweep_dir, cell))
  examples = pipeline.get_task_dataset(task, lengths, split)
  num_examples = runner.train_setting("eval_num_examples")
  if num_examples is not None:
    examples = examples.take(num_examples)
  examples = list(examples.as_numpy_iterator())
  vocabulary = tasks.get_mixture_or_task(task).output_features["targets"].vocabulary
  return task, examples, decode_examples(model, params, examples, lengths["inputs"], lengths["targets"],
                                         vocabulary)


def ensembles(grid: grid_lib.Grid, stack: runner.Stack, sweep_dir: str, rows: Sequence[Mapping[str, Any]],
              metric: str, mode: str = "max") -> list[dict[str, Any]]:
  """Table 3 per (model, initializer, length) with at least two finished seeds: {seed: score}, mean, best
  (by `mode`), and the majority-vote ensemble's score, all by `metric` on the same examples."""
  task_name, name = task_metric(metric)
  by_group: dict[tuple[str, str, int], list[Mapping[str, Any]]] = collections.defaultdict(list)
  for row in rows:
    if row["status"] == "done" and row["best_step"] is not None:
      by_group[(row["model"], row["init"], row["prompt_length"])].append(row)
  table = []
  for (model, init, length), members in by_group.items():
    if len(members) < 2:
      continue
    members = sorted(members, key=lambda r: list(grid.seeds).index(r["seed"]))
    scores, predictions, examples = {}, [], None
    for row in members:
      cell = grid_lib.Cell(model, length, init, row["seed"])
      task, examples, decoded = decode_cell(grid, cell, stack, sweep_dir, row["best_step"])
      if task != task_name:
        raise ValueError(f"--metric {metric} names task {task_name}, the sweep trains {task}; name the "
                         "sweep's task")
      scores[str(row["seed"])] = pipeline.compute_metrics(task, examples, decoded)[name]
      predictions.append(decoded)
    voted = pipeline.compute_metrics(task_name, examples, majority_vote(predictions))[name]
    table.append({"model": model, "init": init, "prompt_length": length, "seeds": scores,
                  "mean": float(np.mean(list(scores.values()))),
                  "best": (max if mode == "max" else min)(scores.values()), "ensemble": voted})
  return table


def flat_rows(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """`ensembles` rows with the seeds' scores as one text column ('0:93.00 1:95.00'), for CSV and printing."""
  return [{**row, "seeds": " ".join(f"{seed}:{score:.2f}" for seed, score in row["seeds"].items())}
          for row in table]
