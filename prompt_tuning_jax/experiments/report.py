"""Writes a sweep's report into SWEEP_DIR: results.csv/json, length_selection.csv, length.png (size.png)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prompt_tuning_jax.experiments import ensemble, plots, results, runner, selection
from prompt_tuning_jax.experiments import grid as grid_lib

SELECTION_CSV = "length_selection.csv"
ENSEMBLES_CSV = "ensembles.csv"
TARGET_CSV = "steps_to_target.csv"


def write_report(sweep_dir: str, grid: grid_lib.Grid, rows: Sequence[dict[str, Any]],
                 metric: str | None = None, mode: str = "max",
                 length_penalty: float = selection.DEFAULT_PENALTY, target: float | None = None,
                 ensembles: Sequence[dict[str, Any]] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes the table, the length selection and the plots (of the finished cells) of `rows`.

  Args:
    sweep_dir: SWEEP_DIR.
    grid: the sweep's grid.
    rows: `results.collect`'s rows.
    metric: the reported metric, e.g. 'validation/<task>/sequence_accuracy'; None: each cell's best_metric.
    mode: 'max' if higher `metric` is better, 'min' if lower.
    length_penalty: the weight w of the length selection's penalty.
    target: the value `rows` counted steps to (prompt transfer's measure), or None; with a value, also
      steps_to_target.csv, the steps per (model, initializer, length).
    ensembles: `ensemble.ensembles`'s table, also written as ensembles.csv, or None.
    extra: more entries for results.json.

  Returns:
    results.json's content: {"rows", "length_selection", "files", ...}.
  """
  sweep_dir = os.path.abspath(sweep_dir)
  reported = metric or (rows[0]["metric"] if rows else "validation/loss")
  chosen = selection.select_lengths(rows, max(grid.lengths), length_penalty, mode)
  files = {"table (CSV)": results.write_csv(os.path.join(sweep_dir, results.RESULTS_CSV), rows),
           "length selection (CSV)": results.write_csv(os.path.join(sweep_dir, SELECTION_CSV), chosen,
                                                       selection.COLUMNS)}
  models = list(grid.model_specs())
  if any(row["status"] == "done" for row in rows):
    files["plot: metric vs prompt length"] = plots.plot_lengths(
        os.path.join(sweep_dir, plots.LENGTH_PLOT), rows, models, list(grid.inits), reported)
    if len(models) > 1:
      files["plot: metric vs model size"] = plots.plot_sizes(
          os.path.join(sweep_dir, plots.SIZE_PLOT), rows, list(grid.lengths), list(grid.inits), reported)
  targets = None
  if target is not None:
    targets = results.steps_to_target_summary(rows)
    files["steps to target (CSV)"] = results.write_csv(os.path.join(sweep_dir, TARGET_CSV), targets,
                                                       results.TARGET_COLUMNS)
  if ensembles is not None:
    files["ensembles (CSV)"] = results.write_csv(os.path.join(sweep_dir, ENSEMBLES_CSV),
                                                 ensemble.flat_rows(ensembles), ensemble.COLUMNS)
  files["table (JSON)"] = os.path.join(sweep_dir, results.RESULTS_JSON)
  report = {"metric": reported, "metric_mode": mode, "length_penalty": length_penalty, "target": target,
            "rows": list(rows), "length_selection": chosen, "steps_to_target": targets,
            "ensembles": ensembles, "files": files,
            **(extra or {})}
  runner.write_json(files["table (JSON)"], report)
  return report


def print_report(report: dict[str, Any], total_cells: int) -> None:
  rows = report["rows"]
  done = sum(row["status"] == "done" for row in rows)
  columns = [c for c in results.COLUMNS if c not in ("metric", "best_metric", "total_parameters")
             and (c != "steps_to_target" or report["target"] is not None)]
  print(f"\n== sweep: {done} of {total_cells} cells finished; value = {report['metric']} at the best "
        "checkpoint "
        f"(by {rows[0]['best_metric'] if rows else '-'}) ==")
  print("\n".join(results.format_table(rows, columns)))
  lengths = sorted({row["prompt_length"] for row in rows})
  print(f"\n== {report['metric']}: mean over seeds (min-max), by initializer and prompt length ==")
  print("\n".join(results.format_table(results.by_length(rows, lengths),
                                       ["model", "init", *(f"L{length}" for length in lengths)])))
  sign = "-" if report["metric_mode"] == "max" else "+"
  print(f"\n== prompt length: best by the metric, and by score x (1 {sign}"
        f" {report['length_penalty']} x length / max length) ==")
  print("\n".join(results.format_table(report["length_selection"], selection.COLUMNS)))
  if report.get("steps_to_target"):
    reach = ">=" if report["metric_mode"] == "max" else "<="
    print(f"\n== steps to reach {report['metric']} {reach} {report['target']} (evaluated steps; seeds in "
          "grid order) ==")
    print("\n".join(results.format_table(report["steps_to_target"], results.TARGET_COLUMNS)))
  if report.get("ensembles"):
    print("\n== prompt ensembles: each seed's best prompt, mean, best, majority vote of the decoded answers "
          "==")
    print("\n".join(results.format_table(ensemble.flat_rows(report["ensembles"]), ensemble.COLUMNS)))
  if report.get("left_out"):
    print("\n== cells left out (Grid.skip_invalid) ==")
    print("\n".join(f"  {name}: {reason}" for name, reason in report["left_out"].items()))
  print("\n== written ==")
  for what, path in report["files"].items():
    print(f"  {what:32s} {path}")

