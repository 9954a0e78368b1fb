"""A sweep's grid: its axes (gin-configurable), its cells, and which cells a process of a job takes.

  lengths x inits x seeds (x models): every combination is one cell, one training run into its own MODEL_DIR.

An initializer is one of `BUILTIN_INITS` (a gin file of gin_configs/prompts/) or the name of one of
`source_prompts`: a trained prompt file that starts the cell (SPoT's prompt transfer, prompts/from_file.gin).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import gin

# Initializer name -> its gin file; the sweep stacks it first, before the user's gin files.
BUILTIN_INITS: dict[str, str] = {
    "uniform": "prompts/from_uniform.gin",
    "sampled_vocab": "prompts/from_sampled_vocab.gin",
    "class_labels": "prompts/from_class_labels.gin",
    "text": "prompts/from_text.gin",
}
SOURCE_INIT_GIN = "prompts/from_file.gin"
DEFAULT_MODEL = "default"  # the model of the user's gin stack, when there is no model axis


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One point of the model-size axis: a model gin file and its pretrained checkpoint (None: random init)."""
  gin_file: str
  checkpoint: str | None


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Grid:
  """The axes of a sweep; bind them in gin, e.g. `grid.Grid.lengths = [1, 5, 20, 50]`.

  Attributes:
    lengths: PROMPT_LENGTH values.
    inits: initializer names: `BUILTIN_INITS` keys or `source_prompts` keys.
    seeds: `runs.train.seed` values (initializer, data order, dropout).
    models: name -> (model gin file, INITIAL_CHECKPOINT_PATH or None): the size axis. Empty: the model of the
      gin stack only. With a model axis, leave the model size file out of the stack (the axis supplies it).
    source_prompts: name -> a trained prompt file (.npy or PEFT adapter) to initialize from (prompt transfer).
    skip_invalid: leave out (and list in the report) the cells that cannot run, e.g. 3 class labels in a
      prompt of length 1, instead of refusing the whole sweep.
  """
  lengths: Sequence[int] = (100,)
  inits: Sequence[str] = ("uniform",)
  seeds: Sequence[int] = (0,)
  models: Mapping[str, Sequence[str | None]] = dataclasses.field(default_factory=dict)
  source_prompts: Mapping[str, str] = dataclasses.field(default_factory=dict)
  skip_invalid: bool = False

  def model_specs(self) -> dict[str, ModelSpec]:
    if not self.models:
      return {DEFAULT_MODEL: ModelSpec(gin_file="", checkpoint=None)}
    specs = {}
    for name, spec in self.models.items():
      if isinstance(spec, str) or len(spec) != 2:
        raise ValueError(f"Grid.models[{name!r}] is {spec!r}; give (model gin file, checkpoint or None), "
                         "e.g. ('models/t5_1_1_small.gin', '/ckpts/t5_small')")
      specs[name] = ModelSpec(gin_file=spec[0], checkpoint=spec[1])
    return specs

  def as_json(self) -> dict:
    return {"lengths": [int(x) for x in self.lengths], "inits": list(self.inits),
            "seeds": [int(x) for x in self.seeds],
            "models": {name: list(spec) for name, spec in self.models.items()},
            "source_prompts": dict(self.source_prompts), "skip_invalid": bool(self.skip_invalid)}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One training run of the sweep."""
  model: str
  prompt_length: int
  init: str
  seed: int

  @property
  def name(self) -> str:
    """The cell's directory name under SWEEP_DIR/cells/, e.g. 'default-L20-uniform-s0'."""
    return f"{self.model}-L{self.prompt_length}-{self.init}-s{self.seed}"


def check_grid(grid: Grid) -> None:
  """Raises one line for an empty axis, a non-positive length, a duplicate or an unknown initializer."""
  for axis in ("lengths", "inits", "seeds"):
    values = list(getattr(grid, axis))
    if not values:
      raise ValueError(f"the sweep grid is empty: Grid.{axis} has no values; give at least one, e.g. "
                       f"--gin.grid.Grid.{axis}=[...] or a preset from gin_configs/sweeps/")
    if len(set(values)) != len(values):
      raise ValueError(f"Grid.{axis} {values} repeats a value; list each once")
  bad = [length for length in grid.lengths if not isinstance(length, int) or length <= 0]
  if bad:
    raise ValueError(f"Grid.lengths {list(grid.lengths)} holds {bad}; prompt lengths are positive integers")
  clashes = sorted(set(grid.source_prompts) & set(BUILTIN_INITS))
  if clashes:
    raise ValueError(f"Grid.source_prompts names {clashes} clash with the built-in initializers; rename them")
  known = [*BUILTIN_INITS, *grid.source_prompts]
  unknown = [init for init in grid.inits if init not in known]
  if unknown:
    raise ValueError(f"Grid.inits {unknown} are not initializers; use {sorted(BUILTIN_INITS)} or a name of "
                     "Grid.source_prompts")
  names = [c.name for c in cells(grid)]
  if any("/" in n or n.startswith(".") for n in names):
    raise ValueError("Grid model and source prompt names must not contain '/' or start with '.'; rename them")
  grid.model_specs()


def cells(grid: Grid) -> list[Cell]:
  """Every cell, in a fixed order: model, then initializer, then length, then seed."""
  return [Cell(model, length, init, seed) for model in grid.model_specs() for init in grid.inits
          for length in grid.lengths for seed in grid.seeds]


def cells_for_process(all_cells: Sequence[Cell], process_index: int, process_count: int) -> list[Cell]:
  """The cells process `process_index` of `process_count` runs: those at positions i with
  i % process_count == process_index (round robin, so each process gets lengths and seeds alike)."""
  if process_count < 1:
    raise ValueError(f"--process_count must be at least 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"--process_index {process_index} is not in [0, {process_count}); number the processes "
                     f"0..{process_count - 1}")
  return [cell for i, cell in enumerate(all_cells) if i % process_count == process_index]


def init_gin_file(init: str) -> str:
  """The gin file of initializer `init` (a source prompt's is prompts/from_file.gin)."""
  return BUILTIN_INITS.get(init, SOURCE_INIT_GIN)
