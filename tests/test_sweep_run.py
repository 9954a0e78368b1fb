"""`python -m prompt_tuning_jax.sweep` end to end on the tiny random T5: a 2-cell grid of real training runs,
split over two processes, resumed, and reported (table, length selection, plots)."""

import csv
import json
import os
import shutil

import _training_helpers  # noqa: F401 (enables the session's compilation cache)
import gin
import numpy as np
import pytest
from _sweep_helpers import run

from prompt_tuning_jax.experiments import runner
from prompt_tuning_jax.training import cli

CELLS = ["default-L2-uniform-s0", "default-L4-uniform-s0"]
METRIC = "validation/synthetic_reverse/token_accuracy"


@pytest.fixture(autouse=True)
def _fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _metrics_text(sweep_dir, cell):
  with open(os.path.join(sweep_dir, runner.CELLS_DIR, cell, "metrics.jsonl")) as f:
    return f.read()


def _train_steps(cell_dir):
  with open(os.path.join(cell_dir, "metrics.jsonl")) as f:
    return [line["step"] for line in map(json.loads, f) if line["split"] == "train"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """A sweep run as a job of two processes (one after the other here), then rerun as one process."""
  sweep_dir = str(tmp_path_factory.mktemp("sweep") / "sweep")
  first = run(sweep_dir, "--process_count=2", "--process_index=0", f"--metric={METRIC}")
  second = run(sweep_dir, "--process_count=2", "--process_index=1", f"--metric={METRIC}")
  return sweep_dir, first, second


@pytest.mark.slow
def test_each_process_trains_only_its_cells(swept):
  sweep_dir, first, second = swept
  assert [row["cell"] for row in first["rows"]] == CELLS[:1]  # process 1's cell had not started yet
  assert [(row["cell"], row["status"]) for row in second["rows"]] == [(c, "done") for c in CELLS]
  for cell in CELLS:
    assert _train_steps(os.path.join(sweep_dir, runner.CELLS_DIR, cell)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_table_and_plot_are_written_with_the_metric_at_the_best_checkpoint(swept):
  sweep_dir, _, report = swept
  with open(os.path.join(sweep_dir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [row["cell"] for row in rows] == CELLS
  for row, length in zip(rows, (2, 4), strict=True):
    assert row["metric"] == METRIC and row["best_metric"] == "validation/loss"
    assert int(row["steps"]) == 4 and int(row["best_step"]) in (2, 4) and float(row["seconds"]) > 0
    assert int(row["trainable_parameters"]) == length * 32  # the tiny model's embed is 32
    with open(os.path.join(sweep_dir, runner.CELLS_DIR, row["cell"], "metrics.jsonl")) as f:
      at_best = [e for e in map(json.loads, f)
                 if e["split"] == "validation" and e["step"] == int(row["best_step"])]
    assert float(row["value"]) == pytest.approx(at_best[-1]["synthetic_reverse/token_accuracy"])
  with open(os.path.join(sweep_dir, "results.json")) as f:
    assert json.load(f)["rows"] == report["rows"]
  with open(os.path.join(sweep_dir, "length.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  [selected] = report["length_selection"]
  assert selected["best_length"] in (2, 4) and selected["penalized_length"] in (2, 4)


@pytest.mark.slow
def test_rerun_skips_finished_cells(swept, tmp_path, capsys):
  sweep_dir = str(tmp_path / "copy")
  shutil.copytree(swept[0], sweep_dir)
  before = {cell: _metrics_text(sweep_dir, cell) for cell in CELLS}
  run(sweep_dir, f"--metric={METRIC}")
  out = capsys.readouterr().out
  assert all(f"{cell}: finished, skipped" in out for cell in CELLS)
  after = {cell: _metrics_text(sweep_dir, cell) for cell in CELLS}
  assert after == before


@pytest.mark.slow
def test_a_partial_cell_resumes_through_the_trainer_and_ends_as_an_uninterrupted_one(swept, tmp_path):
  sweep_dir = str(tmp_path / "copy")
  shutil.copytree(swept[0], sweep_dir)
  cell_dir = os.path.join(sweep_dir, runner.CELLS_DIR, CELLS[1])
  prompt_path = os.path.join("numpy_checkpoints", "checkpoint_4", "encoder.prompt.prompt.prompt")
  uninterrupted = np.load(os.path.join(cell_dir, prompt_path))
  # As if the process had been killed after step 2: no checkpoint_4, the cell still 'running'.
  shutil.rmtree(os.path.join(cell_dir, "checkpoint_4"))
  shutil.rmtree(os.path.join(cell_dir, "numpy_checkpoints", "checkpoint_4"))
  status_path = os.path.join(cell_dir, runner.CELL_FILE)
  status = json.load(open(status_path))
  runner.write_json(status_path, {**status, "status": "running"})
  report = run(sweep_dir, f"--metric={METRIC}")
  assert _train_steps(cell_dir) == [1, 2, 3, 4, 3, 4]  # resumed at step 3, appended to the same log
  np.testing.assert_array_equal(np.load(os.path.join(cell_dir, prompt_path)), uninterrupted)
  assert [row["status"] for row in report["rows"]] == ["done", "done"]
  assert report["rows"][1]["seconds"] > status["seconds"]  # both sessions' time


@pytest.mark.slow
def test_model_size_axis_plots_metric_against_parameters(tmp_path):
  with open(os.path.join(cli.DEFAULT_GIN_SEARCH_PATH, "models", "t5_1_1_tiny.gin")) as f:
    tiny = f.read()
  tiny = tiny.replace("vocab_size = 128", "vocab_size = 136")  # the synthetic vocabulary has 135 ids
  (tmp_path / "tiny.gin").write_text(tiny)
  (tmp_path / "wide.gin").write_text(tiny.replace("emb_dim = 32", "emb_dim = 48"))
  sweep_dir = str(tmp_path / "sweep")
  gin_flags = ["--gin_file=models/prompt.gin", "--gin_file=runs/prompt_finetune.gin"]
  models = {name: (str(tmp_path / f"{name}.gin"), None) for name in ("tiny", "wide")}
  report = run(sweep_dir, *gin_flags, f"--metric={METRIC}", _stack=False,
               **{"Grid.lengths": "[2]", "Grid.models": repr(models), "config.T5Config.vocab_size": None})
  rows = report["rows"]
  assert [row["cell"] for row in rows] == ["tiny-L2-uniform-s0", "wide-L2-uniform-s0"]
  assert rows[0]["total_parameters"] < rows[1]["total_parameters"]
  assert [row["trainable_parameters"] for row in rows] == [2 * 32, 2 * 48]
  with open(os.path.join(sweep_dir, "size.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ensemble_of_two_seeds_scores_each_seed_as_its_evaluation_did(tmp_path):
  report = run(str(tmp_path / "sweep"), "--ensemble", f"--metric={METRIC}",
               **{"Grid.lengths": "[2]", "Grid.seeds": "[0, 1]"})
  [row] = report["ensembles"]
  values = {str(r["seed"]): r["value"] for r in report["rows"]}
  # Greedy decoding of each seed's best prompt reproduces the trainer's evaluation at that step.
  assert row["seeds"] == {seed: pytest.approx(value) for seed, value in values.items()}
  assert row["mean"] == pytest.approx(np.mean(list(values.values())))
  # Two members: every disagreement is a tie, which the earliest seed wins.
  assert row["ensemble"] == pytest.approx(values["0"])
  with open(os.path.join(str(tmp_path / "sweep"), "ensembles.csv")) as f:
    assert next(csv.DictReader(f))["prompt_length"] == "2"
