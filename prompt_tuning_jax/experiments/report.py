"""Writes a sweep's report into SWEEP_DIR: results.csv/json, length_selection.csv, length.png (size.png)."""

from __future__ import annotations

import os
from typing import Any

from prompt_tuning_jax.experiments import grid as grid_lib
from prompt_tuning_jax.experiments import plots, results, runner, selection

SELECTION_CSV = "length_selection.csv"


def write_report(sweep_dir: str, grid: grid_lib.Grid, metric: str | None = None, mode: str = "max",
                 length_penalty: float = selection.DEFAULT_PENALTY, target: float | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Reads every started cell and writes the table, the length selection and the plots (of finished cells).

  Args:
    sweep_dir: SWEEP_DIR.
    grid: the sweep's grid.
    metric: the reported metric, e.g. 'validation/<task>/sequence_accuracy'; None: each cell's best_metric.
    mode: 'max' if higher `metric` is better, 'min' if lower.
    length_penalty: the weight w of the length selection's penalty.
    target: with a value, the table gives the first evaluated step reaching it (prompt transfer's measure).
    extra: more entries for results.json (e.g. ensembles).

  Returns:
    results.json's content: {"rows", "length_selection", "files", ...}.
  """
  if mode not in ("max", "min"):
    raise ValueError(f"--metric_mode must be 'max' or 'min', got {mode!r}")
  sweep_dir = os.path.abspath(sweep_dir)
  rows = results.collect(sweep_dir, grid_lib.cells(grid), metric, mode, target)
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
  files["table (JSON)"] = os.path.join(sweep_dir, results.RESULTS_JSON)
  report = {"metric": reported, "metric_mode": mode, "length_penalty": length_penalty, "target": target,
            "rows": rows, "length_selection": chosen, "files": files, **(extra or {})}
  runner.write_json(files["table (JSON)"], report)
  return report


def print_report(report: dict[str, Any], total_cells: int) -> None:
  rows = report["rows"]
  done = sum(row["status"] == "done" for row in rows)
  columns = [c for c in results.COLUMNS if c not in ("metric", "best_metric", "total_parameters")
             and (c != "steps_to_target" or report["target"] is not None)]
  print(f"\n== sweep: {done} of {total_cells} cells finished; value = {report['metric']} at the best checkpoint "
        f"(by {rows[0]['best_metric'] if rows else '-'}) ==")
  print("\n".join(results.format_table(rows, columns)))
  print(f"\n== prompt length: best by the metric, and by score x (1 {'-' if report['metric_mode'] == 'max' else '+'}"
        f" {report['length_penalty']} x length / max length) ==")
  print("\n".join(results.format_table(report["length_selection"], selection.COLUMNS)))
  if report.get("left_out"):
    print("\n== cells left out (Grid.skip_invalid) ==")
    print("\n".join(f"  {name}: {reason}" for name, reason in report["left_out"].items()))
  print("\n== written ==")
  for what, path in report["files"].items():
    print(f"  {what:32s} {path}")

