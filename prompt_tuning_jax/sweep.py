r"""Sweeps prompt length x initializer x seed (x model size): one real training run per cell, then a table,
the length selection and the paper's Figure 3 plots.

  python -m prompt_tuning_jax.sweep --gin_file=sweeps/demo.gin --sweep_dir=/tmp/sweep \
    [--metric=validation/<task>/sequence_accuracy] [--metric_mode=max] [--length_penalty=0.1] \
    [--ensemble] [--target=90] [--report_only]

The gin stack is `train`'s (gin_configs/, `--gin_file`, `--gin.NAME=VALUE`, ...) without a prompts/ file:
the grid (`grid.Grid.lengths / inits / seeds / models / source_prompts`) says which initializer each cell
gets. Re-running the same command skips finished cells and resumes a partial one. A job of N processes (hosts) runs
the same command with `--process_count=N --process_index=i`: process i trains the cells at positions
j % N == i, each with its own single-process jax (no jax.distributed), into the one shared --sweep_dir; each
writes the report of the cells finished so far when its share is done (or rerun with --report_only).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from prompt_tuning_jax.training import native_logs  # noqa: E402

native_logs.quiet_imports()  # before TensorFlow and jax are imported below

from prompt_tuning_jax.data import pipeline  # noqa: E402
from prompt_tuning_jax.experiments import ensemble, results, runner, selection  # noqa: E402
from prompt_tuning_jax.experiments import grid as grid_lib  # noqa: E402
from prompt_tuning_jax.experiments import report as report_lib  # noqa: E402
from prompt_tuning_jax.training import cli  # noqa: E402


def parse_sweep_flags(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """The sweep's own flags; the rest are `train`'s (training/cli.py)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   prog="python -m prompt_tuning_jax.sweep", add_help=False)
  parser.add_argument("--sweep_dir", default=None, help="where the cells and the report go")
  parser.add_argument("--metric", default=None,
                      help="the reported metric, e.g. validation/<task>/sequence_accuracy (default: "
                      "the trainer's best_metric)")
  parser.add_argument("--metric_mode", default="max", choices=("max", "min"), help="max: higher is better")
  parser.add_argument("--length_penalty", type=float, default=selection.DEFAULT_PENALTY,
                      help="w of the length selection score x (1 - w x length / max length)")
  parser.add_argument("--target", type=float, default=None,
                      help="report the first evaluated step whose metric reaches this value")
  parser.add_argument("--ensemble", action="store_true",
                      help="also decode each seed's best prompt and score their majority vote (Table 3)")
  parser.add_argument("--report_only", action="store_true", help="train nothing; rewrite the report")
  return parser.parse_known_args(argv)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the command line asks for."""
  flags: argparse.Namespace  # the sweep's own flags
  grid: grid_lib.Grid
  stack: runner.Stack
  process_index: int
  process_count: int


def configure(argv: Sequence[str]) -> Setup:
  """Parses the flags and reads the grid from the gin stack (which is left parsed)."""
  sweep_args, rest = parse_sweep_flags(argv)
  args = cli.parse_flags(rest, __doc__.splitlines()[0])
  if not sweep_args.sweep_dir:
    raise ValueError("--sweep_dir is required; pass a new directory, or an existing sweep's to resume it")
  if args.coordinator_address:
    raise ValueError("--coordinator_address: the sweep's processes are independent single-process jax runs; "
                     "drop it and pass --process_count and --process_index only")
  if sweep_args.ensemble:
    ensemble.task_metric(sweep_args.metric or "")  # a decoded metric, checked before any cell trains
  if sweep_args.length_penalty < 0:
    raise ValueError(f"--length_penalty must be at least 0, got {sweep_args.length_penalty}")
  if args.tfds_data_dir:
    pipeline.set_tfds_data_dir(args.tfds_data_dir)
  stack = runner.Stack(args.gin_file, args.gin_bindings, args.gin_search_paths)
  runner.check_stack(stack)
  # The grid is all that is read from this parse. Placeholders for what the cells supply: an initializer, the
  # MODEL_DIR and, with a model axis, the MODEL.
  cli.parse_gin([grid_lib.BUILTIN_INITS["uniform"], *stack.gin_files],
                [*stack.gin_bindings, f"MODEL_DIR = {sweep_args.sweep_dir!r}", "MODEL = None"],
                stack.search_paths)
  process_count = 1 if args.process_count is None else args.process_count
  process_index = 0 if args.process_index is None else args.process_index
  grid_lib.cells_for_process([], process_index, process_count)  # checks the two flags
  return Setup(sweep_args, grid_lib.Grid(), stack, process_index, process_count)


def run(argv: Sequence[str]) -> dict:
  """The whole sweep: checks, this process's cells, the report. Returns results.json's content."""
  setup = configure(argv)
  flags = setup.flags
  planned, invalid = runner.prepare(setup.grid, setup.stack, flags.sweep_dir)
  if not flags.report_only:
    runner.run_cells(setup.grid, setup.stack, flags.sweep_dir, planned, setup.process_index,
                     setup.process_count)
  rows = results.collect(flags.sweep_dir, grid_lib.cells(setup.grid), flags.metric, flags.metric_mode,
                         flags.target)
  ensembles = None
  if flags.ensemble:
    ensembles = ensemble.ensembles(setup.grid, setup.stack, flags.sweep_dir, rows, flags.metric or "",
                                   flags.metric_mode)
  report = report_lib.write_report(flags.sweep_dir, setup.grid, rows, flags.metric, flags.metric_mode,
                                   flags.length_penalty, flags.target, ensembles, {"left_out": invalid})
  report_lib.print_report(report, len(planned))
  return report


def main(argv: Sequence[str] | None = None) -> None:
  with cli.errors_as_one_line("sweep"):
    run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  main()
