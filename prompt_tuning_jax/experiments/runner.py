"""Runs a sweep: checks every cell, records the sweep in SWEEP_DIR, trains the cells (skipping finished ones).

  SWEEP_DIR/sweep.json             the manifest: grid, gin files and bindings; a different sweep is refused
  SWEEP_DIR/cells/<cell>/          the cell's MODEL_DIR (checkpoints, metrics.jsonl, config.gin, ...)
  SWEEP_DIR/cells/<cell>/sweep_cell.json   the cell's status ('running', 'partial', 'done', 'failed': it
                                   diverged), wall seconds over all sessions, parameter counts, the trainer
                                   settings its results are read with, and its `train` command

Each cell is a real `runs.train` (what `python -m prompt_tuning_jax.train` calls) on the gin stack
  <initializer gin> [<model gin>] <the sweep's gin files> <the sweep's bindings> <the cell's bindings>
so a cell is exactly the train command `train_command` prints. A finished cell is skipped, and so is a failed
one (its rerun would diverge at the same step: the run is deterministic); a partial one resumes from its
latest checkpoint through the trainer's own resume.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np

from prompt_tuning_jax.experiments import grid as grid_lib
from prompt_tuning_jax.model import t5
from prompt_tuning_jax.training import cli, runs, train_state
from prompt_tuning_jax.training.trainer import NonFiniteLossError

MANIFEST_FILE = "sweep.json"
CELLS_DIR = "cells"
CELL_FILE = "sweep_cell.json"
MANIFEST_VERSION = 1
FINAL_STATUSES = ("done", "failed")


@dataclasses.dataclass(frozen=True)
class Stack:
  """The sweep's own gin stack (no initializer file) and where to find gin files."""
  gin_files: Sequence[str]
  gin_bindings: Sequence[str]
  search_paths: Sequence[str] = ()


def cell_dir(sweep_dir: str, cell: grid_lib.Cell) -> str:
  return os.path.join(sweep_dir, CELLS_DIR, cell.name)


def cell_stack(grid: grid_lib.Grid, cell: grid_lib.Cell, stack: Stack,
               sweep_dir: str) -> tuple[list[str], list[str]]:
  """(gin files, bindings) of one cell's training run.

  The initializer file goes first: prompts/from_class_labels.gin declares CLASS_LABELS required, and the run
  files after it (runs/prompt_finetune.gin) bind it to the task's labels; bindings override everything.
  """
  files = [grid_lib.init_gin_file(cell.init)]
  bindings = [f"MODEL_DIR = {cell_dir(sweep_dir, cell)!r}", f"PROMPT_LENGTH = {cell.prompt_length}",
              f"runs.train.seed = {cell.seed}"]
  if cell.init in grid.source_prompts:
    bindings.append(f"PROMPT_FILE = {os.path.abspath(grid.source_prompts[cell.init])!r}")
  if grid.models:
    spec = grid.model_specs()[cell.model]
    files.append(spec.gin_file)
    bindings.append(f"INITIAL_CHECKPOINT_PATH = {spec.checkpoint!r}")
  return files + list(stack.gin_files), list(stack.gin_bindings) + bindings


def train_command(grid: grid_lib.Grid, cell: grid_lib.Cell, stack: Stack, sweep_dir: str) -> str:
  """The `python -m prompt_tuning_jax.train` command line that is the same run as `cell`."""
  files, bindings = cell_stack(grid, cell, stack, sweep_dir)
  parts = ["python -m prompt_tuning_jax.train", *(f"--gin_file={f}" for f in files),
           *(f"--gin_bindings={b!r}" for b in bindings)]
  return " ".join(parts)


def parse_cell_gin(grid: grid_lib.Grid, cell: grid_lib.Cell, stack: Stack, sweep_dir: str) -> None:
  """Replaces the gin config by the cell's."""
  files, bindings = cell_stack(grid, cell, stack, sweep_dir)
  gin.clear_config()
  cli.parse_gin(files, bindings, stack.search_paths)


def _evaluated(value: Any) -> Any:
  """A queried gin value with its references (`%MACRO`, `@demo.pretrained_checkpoint_path()`) evaluated."""
  while isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    value = value.scoped_configurable_fn()
  return value


def macro(name: str) -> Any:
  """The value of gin macro `name`."""
  return _evaluated(gin.query_parameter(f"%{name}"))


def train_setting(name: str) -> Any:
  """`runs.train`'s argument `name` as gin binds it, else its default."""
  try:
    return _evaluated(gin.query_parameter(f"runs.train.{name}"))
  except ValueError:
    return inspect.signature(runs.train).parameters[name].default


def check_stack(stack: Stack) -> None:
  """The sweep supplies the initializer per cell, so the stack must not hold one of gin_configs/prompts/."""
  for gin_file in stack.gin_files:
    if os.path.normpath(gin_file).startswith(f"prompts{os.sep}"):
      raise ValueError(f"--gin_file={gin_file}: the sweep adds each cell's initializer itself (Grid.inits); "
                       "drop the prompts/ file from the stack")


def plan_cell(grid: grid_lib.Grid, cell: grid_lib.Cell, stack: Stack, sweep_dir: str) -> dict[str, Any]:
  """Parses the cell's gin and checks it without training: the model builds and initializes its prompt
  (abstractly: class labels, text, prompt files are resolved), and the prompt fits the encoder.

  Returns:
    The facts the results are read with: train_steps, best_metric, best_mode, parameter counts.
  """
  parse_cell_gin(grid, cell, stack, sweep_dir)
  lengths = macro("TASK_FEATURE_LENGTHS")
  max_encoder_length = macro("MAX_ENCODER_LENGTH")
  if max_encoder_length is not None and cell.prompt_length + lengths["inputs"] > max_encoder_length:
    raise ValueError(f"Grid.lengths holds {cell.prompt_length}: PROMPT_LENGTH {cell.prompt_length} + "
                     f"TASK_FEATURE_LENGTHS['inputs'] {lengths['inputs']} is more than MAX_ENCODER_LENGTH "
                     f"{max_encoder_length}; drop that length, shorten the inputs or raise "
                     "MAX_ENCODER_LENGTH")
  model = gin.get_configurable(t5.Transformer)()
  if model.prompt_factory is None:
    raise ValueError("the sweep's gin stack has no prompt; add --gin_file=models/prompt.gin after the model "
                     "size")
  shapes, _ = runs.abstract_params(model, lengths)  # runs the prompt initializer abstractly
  trainable, _ = train_state.split_params(shapes, macro("PROMPT_REGEX"))
  count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
  return {"train_steps": int(macro("TRAIN_STEPS")), "best_metric": train_setting("best_metric"),
          "best_mode": train_setting("best_mode"), "trainable_parameters": count(trainable),
          "total_parameters": count(shapes)}


def plan(grid: grid_lib.Grid, stack: Stack,
         sweep_dir: str) -> tuple[dict[grid_lib.Cell, dict[str, Any]], dict[str, str]]:
  """`plan_cell` of every cell (the seeds of a cell share one check): all are valid before any trains.

  Returns:
    ({cell: its facts}, {name of a cell left out: why}); cells are left out only with `Grid.skip_invalid`,
    otherwise the first invalid cell raises.
  """
  grid_lib.check_grid(grid)
  check_stack(stack)
  facts: dict[tuple[str, int, str], dict[str, Any] | str] = {}
  planned, invalid = {}, {}
  for cell in grid_lib.cells(grid):
    key = (cell.model, cell.prompt_length, cell.init)
    if key not in facts:
      try:
        facts[key] = plan_cell(grid, cell, stack, sweep_dir)
      except cli.INPUT_ERRORS as e:
        reason = cli.one_line(e)
        if not grid.skip_invalid:
          raise ValueError(f"cell {cell.name}: {reason} (or leave such cells out: Grid.skip_invalid = True)"
                           ) from None
        facts[key] = reason
    if isinstance(facts[key], str):
      invalid[cell.name] = facts[key]
    else:
      planned[cell] = facts[key]
  if not planned:
    raise ValueError(f"no cell of the grid can run; the first: {next(iter(invalid.items()))}")
  return planned, invalid


def manifest(grid: grid_lib.Grid, stack: Stack) -> dict[str, Any]:
  return {"version": MANIFEST_VERSION, "grid": grid.as_json(), "gin_files": list(stack.gin_files),
          "gin_bindings": list(stack.gin_bindings)}


def check_sweep_dir(sweep_dir: str, expected: Mapping[str, Any]) -> bool:
  """Whether SWEEP_DIR holds this sweep (True) or is new or empty (False); raises if it holds another."""
  if not os.path.exists(sweep_dir):
    return False
  if not os.path.isdir(sweep_dir):
    raise ValueError(f"--sweep_dir {sweep_dir} is a file; pass a directory")
  path = os.path.join(sweep_dir, MANIFEST_FILE)
  if not os.path.isfile(path):
    # Another process of the job may be between its write probe and its manifest's atomic rename.
    if [e for e in os.listdir(sweep_dir) if not e.startswith((".write_test_", f"{MANIFEST_FILE}.tmp"))]:
      raise ValueError(f"--sweep_dir {sweep_dir} is not empty and holds no {MANIFEST_FILE}; pass a new or "
                       "empty directory")
    return False
  with open(path) as f:
    found = json.load(f)
  differing = sorted(key for key in {*found, *expected} if found.get(key) != expected.get(key))
  if differing:
    raise ValueError(f"--sweep_dir {sweep_dir} holds another sweep (its {MANIFEST_FILE} differs in "
                     f"{', '.join(differing)}); pass a new --sweep_dir, or the original gin files and "
                     "bindings to resume it")
  return True


def write_json(path: str, value: Any) -> None:
  """Writes JSON atomically (a reader, or another process of the job, never sees half a file)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_cell_status(sweep_dir: str, cell: grid_lib.Cell) -> dict[str, Any] | None:
  path = os.path.join(cell_dir(sweep_dir, cell), CELL_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_cell(grid: grid_lib.Grid, cell: grid_lib.Cell, stack: Stack, sweep_dir: str,
             facts: Mapping[str, Any]) -> dict[str, Any]:
  """Trains one cell (resuming it if partial) and records its status; a finished or failed cell is returned as
  it is."""
  status = read_cell_status(sweep_dir, cell)
  if status is not None and status["status"] in FINAL_STATUSES:
    return status
  seconds = status["seconds"] if status else 0.0
  directory = cell_dir(sweep_dir, cell)
  os.makedirs(directory, exist_ok=True)
  record = {"cell": dataclasses.asdict(cell), "name": cell.name, **facts,
            "train_command": train_command(grid, cell, stack, sweep_dir)}
  write_json(os.path.join(directory, CELL_FILE), {**record, "status": "running", "seconds": seconds})
  parse_cell_gin(grid, cell, stack, sweep_dir)
  started = time.perf_counter()
  outcome, error = "partial", None
  try:
    gin.get_configurable(runs.train)()
    outcome = "done"
  except NonFiniteLossError as e:  # the cell diverged: record it, the other cells still run
    outcome, error = "failed", cli.one_line(e)
  finally:
    seconds += time.perf_counter() - started
    status = {**record, "status": outcome, "seconds": seconds, **({"error": error} if error else {})}
    write_json(os.path.join(directory, CELL_FILE), status)
  return status


def prepare(grid: grid_lib.Grid, stack: Stack,
            sweep_dir: str) -> tuple[dict[grid_lib.Cell, dict[str, Any]], dict[str, str]]:
  """Checks the grid, the stack and SWEEP_DIR, then (only then) writes the manifest; returns `plan`'s."""
  sweep_dir = os.path.abspath(sweep_dir)
  expected = manifest(grid, stack)
  exists = check_sweep_dir(sweep_dir, expected)
  planned = plan(grid, stack, sweep_dir)
  if not exists:
    runs.check_writable_dir(sweep_dir, "--sweep_dir")
    write_json(os.path.join(sweep_dir, MANIFEST_FILE), expected)
  return planned


def run_cells(grid: grid_lib.Grid, stack: Stack, sweep_dir: str,
              planned: Mapping[grid_lib.Cell, Mapping[str, Any]], process_index: int = 0,
              process_count: int = 1) -> list[dict[str, Any]]:
  """Runs this process's share of the cells, one after another; returns their statuses."""
  sweep_dir = os.path.abspath(sweep_dir)
  mine = grid_lib.cells_for_process(list(planned), process_index, process_count)
  statuses = []
  for number, cell in enumerate(mine, 1):
    status = (read_cell_status(sweep_dir, cell) or {}).get("status")
    doing = {"done": "finished, skipped", "failed": "diverged before, skipped"}.get(status, "training")
    print(f"sweep: cell {number}/{len(mine)} {cell.name}: {doing}", flush=True)
    statuses.append(run_cell(grid, cell, stack, sweep_dir, planned[cell]))
  return statuses
