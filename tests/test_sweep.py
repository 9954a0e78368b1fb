"""The sweep's logic without training: the grid and its partitioning over processes, results read from
metrics.jsonl, length selection on constructed results, and every bad input refused before anything is
written."""

import json
import os

import _training_helpers  # noqa: F401 (enables the session's compilation cache)
import gin
import numpy as np
import pytest
from _sweep_helpers import flags
from flax import traverse_util

from prompt_tuning_jax import sweep
from prompt_tuning_jax.experiments import ensemble, results, runner, selection
from prompt_tuning_jax.experiments import grid as grid_lib
from prompt_tuning_jax.model import t5
from prompt_tuning_jax.training import checkpointing, runs


@pytest.fixture(autouse=True)
def _fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_cells_cover_every_combination_once_in_grid_order():
  grid = grid_lib.Grid(lengths=[1, 5], inits=["uniform", "text"], seeds=[0, 1])
  cells = grid_lib.cells(grid)
  assert len(cells) == 8 and len(set(cells)) == 8
  assert [c.name for c in cells[:3]] == ["default-L1-uniform-s0", "default-L1-uniform-s1",
                                         "default-L5-uniform-s0"]


def test_processes_take_cells_round_robin_and_together_take_each_once():
  cells = grid_lib.cells(grid_lib.Grid(lengths=[1, 5, 20], inits=["uniform", "text"], seeds=[0]))
  shares = [grid_lib.cells_for_process(cells, i, 4) for i in range(4)]
  assert shares[1] == [cells[1], cells[5]]
  assert sorted((c for share in shares for c in share), key=cells.index) == cells
  assert grid_lib.cells_for_process(cells, 0, 1) == cells
  assert grid_lib.cells_for_process(cells, 3, 8) == [cells[3]]
  assert grid_lib.cells_for_process(cells, 7, 8) == []


@pytest.mark.parametrize("index,count", [(2, 2), (-1, 2), (0, 0)])
def test_bad_process_index_or_count_is_refused(index, count):
  with pytest.raises(ValueError, match="process"):
    grid_lib.cells_for_process([], index, count)


def test_model_axis_multiplies_the_cells():
  grid = grid_lib.Grid(lengths=[1], inits=["uniform"], seeds=[0],
                       models={"small": ("models/t5_1_1_small.gin", None),
                               "base": ("models/t5_1_1_base.gin", "/c")})
  assert [c.name for c in grid_lib.cells(grid)] == ["small-L1-uniform-s0", "base-L1-uniform-s0"]


def _write_metrics(model_dir, lines):
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)


def test_best_evaluation_is_the_best_by_best_metric_earliest_among_equals(tmp_path):
  _write_metrics(tmp_path, [
      {"step": 10, "split": "train", "loss": 9.0},
      {"step": 10, "split": "validation", "loss": 0.5, "t/acc": 60.0},
      {"step": 20, "split": "validation", "loss": 0.3, "t/acc": 55.0},
      {"step": 30, "split": "validation", "loss": 0.3, "t/acc": 70.0},
      {"step": 40, "split": "validation", "loss": 0.4, "t/acc": 90.0}])
  step, entry = results.best_evaluation(str(tmp_path), "validation/loss", "min")
  assert (step, entry["t/acc"]) == (20, 55.0)  # read at the best checkpoint, not at its own best
  assert results.best_evaluation(str(tmp_path), "validation/t/acc", "max")[0] == 40
  assert results.steps_to_reach(str(tmp_path), "validation/t/acc", 65.0, "max") == 30
  assert results.steps_to_reach(str(tmp_path), "validation/t/acc", 95.0, "max") is None
  assert results.steps_to_reach(str(tmp_path), "validation/loss", 0.35, "min") == 20


def test_a_resumed_run_logging_a_step_twice_counts_the_later_line(tmp_path):
  _write_metrics(tmp_path, [{"step": 10, "split": "validation", "loss": 0.1},
                            {"step": 10, "split": "validation", "loss": 0.7},
                            {"step": 20, "split": "validation", "loss": 0.5}])
  assert results.best_evaluation(str(tmp_path), "validation/loss", "min")[0] == 20


def _row(length, init, seed, value, status="done"):
  return {"model": "default", "init": init, "prompt_length": length, "seed": seed, "value": value,
          "status": status}


def test_length_selection_by_metric_and_by_penalized_score_side_by_side():
  rows = [_row(1, "uniform", 0, 40.0), _row(1, "uniform", 1, 60.0),  # mean 50
          _row(20, "uniform", 0, 80.0), _row(20, "uniform", 1, 82.0),  # mean 81
          _row(100, "uniform", 0, 88.0), _row(100, "uniform", 1, 86.0),  # mean 87
          _row(100, "uniform", 2, 10.0, status="failed")]  # not finished: ignored
  [chosen] = selection.select_lengths(rows, max_length=100, weight=0.1)
  assert (chosen["best_length"], chosen["best_score"]) == (100, 87.0)
  # 81 x (1 - 0.1 x 20/100) = 79.38 beats 87 x (1 - 0.1) = 78.3 and 50 x 0.999 = 49.95.
  assert chosen["penalized_length"] == 20
  assert chosen["penalized_score"] == pytest.approx(79.38)
  assert chosen["scores"]["100"] == [pytest.approx(87.0), pytest.approx(78.3)]
  assert selection.select_lengths(rows, 100, weight=0.0)[0]["penalized_length"] == 100


def test_length_selection_of_a_loss_penalizes_upwards_and_prefers_the_shorter_on_ties():
  rows = [_row(5, "text", 0, 1.0), _row(10, "text", 0, 1.0), _row(50, "text", 0, 0.9)]
  [chosen] = selection.select_lengths(rows, max_length=50, weight=0.5, mode="min")
  assert chosen["best_length"] == 50
  assert chosen["penalized_length"] == 5  # 1.0 x 1.05 < 0.9 x 1.5; 5 and 10 score 1.0 alike unpenalized
  assert selection.penalized(1.0, 10, 50, 0.5, "min") == pytest.approx(1.1)


def _expect_refused(capsys, sweep_dir, fix, *extra, **macros):
  """The sweep exits 1 with one `sweep: error:` line containing `fix`; the sweep dir is left as it was."""
  before = sorted(os.walk(sweep_dir)) if os.path.exists(sweep_dir) else None
  manifest = os.path.join(sweep_dir, runner.MANIFEST_FILE)
  manifest_text = open(manifest).read() if os.path.isfile(manifest) else None
  gin.clear_config()
  with pytest.raises(SystemExit) as exit_info:
    sweep.main(flags(sweep_dir, *extra, **macros))
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith("sweep: error:")]
  assert len(errors) == 1 and fix in errors[0], err
  assert "Traceback" not in err
  assert (sorted(os.walk(sweep_dir)) if os.path.exists(sweep_dir) else None) == before
  assert (open(manifest).read() if os.path.isfile(manifest) else None) == manifest_text
  return errors[0]


@pytest.mark.parametrize("axis", ["lengths", "inits", "seeds"])
def test_empty_grid_is_refused(capsys, tmp_path, axis):
  _expect_refused(capsys, str(tmp_path / "sweep"), f"Grid.{axis} has no values", **{f"Grid.{axis}": "[]"})


def test_length_beyond_max_encoder_length_is_refused(capsys, tmp_path):
  error = _expect_refused(capsys, str(tmp_path / "sweep"), "raise MAX_ENCODER_LENGTH",
                          MAX_ENCODER_LENGTH="20", **{"Grid.lengths": "[2, 8]"})
  assert "default-L8-uniform-s0" in error and "PROMPT_LENGTH 8" in error


def test_class_labels_for_a_generation_task_is_refused(capsys, tmp_path):
  error = _expect_refused(capsys, str(tmp_path / "sweep"), "has no class labels",
                          **{"Grid.inits": "['uniform', 'class_labels']"})
  assert "default-L2-class_labels-s0" in error


def test_unknown_initializer_is_refused(capsys, tmp_path):
  _expect_refused(capsys, str(tmp_path / "sweep"), "are not initializers", **{"Grid.inits": "['random']"})


def test_a_prompts_file_in_the_stack_is_refused(capsys, tmp_path):
  _expect_refused(capsys, str(tmp_path / "sweep"), "drop the prompts/ file",
                  "--gin_file=prompts/from_uniform.gin")


def test_sweep_dir_holding_another_sweep_is_refused_and_untouched(capsys, tmp_path):
  sweep_dir = str(tmp_path / "sweep")
  runner.prepare(*_grid_and_stack(sweep_dir), sweep_dir)  # records the sweep without training a cell
  assert os.listdir(sweep_dir) == [runner.MANIFEST_FILE]
  _expect_refused(capsys, sweep_dir, "holds another sweep", **{"Grid.seeds": "[0, 1]"})
  _expect_refused(capsys, sweep_dir, "holds another sweep", TRAIN_STEPS="6")


def test_non_empty_dir_without_a_manifest_is_refused(capsys, tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  _expect_refused(capsys, str(tmp_path), "holds no sweep.json")


def test_invalid_cells_are_left_out_and_listed_with_skip_invalid(tmp_path):
  sweep_dir = str(tmp_path / "sweep")
  grid, stack = _grid_and_stack(sweep_dir, **{"Grid.inits": "['uniform', 'class_labels']",
                                              "Grid.skip_invalid": "True"})
  planned, left_out = runner.plan(grid, stack, sweep_dir)
  assert [c.name for c in planned] == ["default-L2-uniform-s0", "default-L4-uniform-s0"]
  assert set(left_out) == {"default-L2-class_labels-s0", "default-L4-class_labels-s0"}
  assert "has no class labels" in left_out["default-L2-class_labels-s0"]
  assert planned[grid_lib.Cell("default", 4, "uniform", 0)]["trainable_parameters"] == 4 * 32


def _grid_and_stack(sweep_dir, **macros):
  setup = sweep.configure(flags(sweep_dir, **macros))
  return setup.grid, setup.stack


def test_missing_sweep_dir_is_refused(capsys):
  with pytest.raises(SystemExit):
    sweep.main(["--gin_file=models/t5_1_1_tiny.gin"])
  assert "--sweep_dir is required" in capsys.readouterr().err


def test_majority_vote_takes_the_most_frequent_answer_and_breaks_ties_by_the_earliest_seed():
  seeds = [["red", "blue", "a b", "x"],
           ["blue", "blue", "b a", "y"],
           ["blue", "red", "c", "z"]]
  assert ensemble.majority_vote(seeds) == ["blue", "blue", "a b", "x"]
  assert ensemble.majority_vote(seeds[1:]) == ["blue", "blue", "b a", "y"]


def test_an_ensemble_needs_a_decoded_metric(capsys, tmp_path):
  _expect_refused(capsys, str(tmp_path / "sweep"), "decoded metric", "--ensemble", "--metric=validation/loss")


def test_a_source_prompt_initializes_its_cells(tmp_path):
  """Prompt transfer: the cell's stack (prompts/from_file.gin + PROMPT_FILE) starts from the saved prompt."""
  source = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
  np.save(tmp_path / "source.npy", source)
  sweep_dir = str(tmp_path / "sweep")
  sources = repr({"src": str(tmp_path / "source.npy")})
  grid, stack = _grid_and_stack(sweep_dir, **{"Grid.lengths": "[4]", "Grid.inits": "['uniform', 'src']",
                                              "Grid.source_prompts": sources})
  planned, _ = runner.plan(grid, stack, sweep_dir)
  assert [c.name for c in planned] == ["default-L4-uniform-s0", "default-L4-src-s0"]
  runner.parse_cell_gin(grid, grid_lib.Cell("default", 4, "src", 0), stack, sweep_dir)
  model = gin.get_configurable(t5.Transformer)()
  lengths = runner.macro("TASK_FEATURE_LENGTHS")
  params = runs.initial_params(model, lengths, None, runner.macro("PROMPT_REGEX"), seed=0)
  np.testing.assert_array_equal(traverse_util.flatten_dict(params)[checkpointing.PROMPT_PATH], source)


def test_a_source_prompt_of_another_length_is_refused(capsys, tmp_path):
  np.save(tmp_path / "source.npy", np.zeros((3, 32), np.float32))
  error = _expect_refused(capsys, str(tmp_path / "sweep"), "default-L2-src-s0",
                          **{"Grid.inits": "['src']",
                             "Grid.source_prompts": repr({"src": str(tmp_path / "source.npy")})})
  assert "3" in error


def test_a_sweep_dir_another_process_is_just_creating_counts_as_new(tmp_path):
  (tmp_path / ".write_test_123_0").write_text("probe")
  (tmp_path / f"{runner.MANIFEST_FILE}.tmp77").write_text("{")
  assert runner.check_sweep_dir(str(tmp_path), {"version": 1}) is False


def test_steps_to_target_summary_counts_the_seeds_that_reached_it():
  rows = [{**_row(20, "src", 0, 90.0), "steps_to_target": 40},
          {**_row(20, "src", 1, 80.0), "steps_to_target": 60},
          {**_row(20, "uniform", 0, 50.0), "steps_to_target": None},
          {**_row(20, "uniform", 1, 95.0), "steps_to_target": 100}]
  src, uniform = results.steps_to_target_summary(rows)
  assert (src["reached"], src["mean_steps_to_target"], src["steps_to_target"]) == ("2/2", 50.0, "40 60")
  assert (uniform["reached"], uniform["mean_steps_to_target"], uniform["steps_to_target"]) == ("1/2", 100.0,
                                                                                                "None 100")


def test_by_length_table_gives_mean_and_seed_range_per_initializer():
  rows = [_row(1, "uniform", 0, 40.0), _row(1, "uniform", 1, 60.0), _row(20, "uniform", 0, 80.0),
          _row(20, "text", 0, 99.0), _row(20, "text", 1, 10.0, status="running")]
  uniform, text = results.by_length(rows, [1, 20])
  assert uniform == {"model": "default", "init": "uniform", "L1": "50.0 (40-60)", "L20": "80.0 (80-80)"}
  assert text == {"model": "default", "init": "text", "L1": None, "L20": "99.0 (99-99)"}


@pytest.mark.parametrize("status", ["done", "failed"])
def test_a_finished_or_diverged_cell_is_not_run_again(tmp_path, status):
  cell = grid_lib.Cell("default", 2, "uniform", 0)
  os.makedirs(runner.cell_dir(str(tmp_path), cell))
  recorded = {"status": status, "seconds": 3.0}
  runner.write_json(os.path.join(runner.cell_dir(str(tmp_path), cell), runner.CELL_FILE), recorded)
  stack = runner.Stack(gin_files=["does/not/exist.gin"], gin_bindings=[])  # parsing it would fail
  assert runner.run_cell(grid_lib.Grid(lengths=[2]), cell, stack, str(tmp_path), {}) == recorded
