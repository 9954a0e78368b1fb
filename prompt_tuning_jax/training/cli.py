"""t5x-style command lines: gin flags, multi-process flags, and one-line errors.

  --gin_file=FILE            (repeatable) gin files, searched in --gin_search_paths and gin_configs/
  --gin.NAME=VALUE           one binding, e.g. --gin.MODEL_DIR="'/tmp/run'" (values are gin literals)
  --gin_bindings='A = 1'     (repeatable) bindings as gin text
  --gin_search_paths=a,b     extra directories for gin files and their includes
  --tfds_data_dir=DIR        where TFDS datasets are prepared
  --coordinator_address, --process_count, --process_index   multi-process jobs (or the environment, see
                             `partitioning.initialize_distributed`)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import gin

from prompt_tuning_jax.data import pipeline
from prompt_tuning_jax.training import partitioning
from prompt_tuning_jax.training.trainer import NonFiniteLossError

T = TypeVar("T")
# The repository's gin_configs/ (a source checkout), so `--gin_file=runs/prompt_finetune.gin` resolves.
DEFAULT_GIN_SEARCH_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "gin_configs")


def parse_flags(argv: Sequence[str], description: str) -> argparse.Namespace:
  """Parses the flags above; `--gin.NAME=VALUE` becomes the binding `NAME = VALUE`."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding text (repeatable)")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="comma-separated directories searched for gin files")
  parser.add_argument("--tfds_data_dir", default=None, help="directory of prepared TFDS datasets")
  parser.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process)")
  parser.add_argument("--process_count", type=int, default=None, help="number of processes (multi-process)")
  parser.add_argument("--process_index", type=int, default=None, help="this process's index (multi-process)")
  gin_flags, rest = [], []
  for arg in argv:
    if arg.startswith("--gin.") and not arg.startswith("--gin._"):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        parser.error(f"{arg} has no value; write --gin.{name}=VALUE, e.g. --gin.{name}=\"'text'\" or =100")
      gin_flags.append(f"{name} = {value}")
    else:
      rest.append(arg)
  args = parser.parse_args(rest)
  args.gin_bindings = list(args.gin_bindings) + gin_flags
  return args


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], search_paths: Sequence[str]) -> None:
  """Parses gin files then bindings (later ones win), resolving files in `search_paths` and gin_configs/."""
  paths = [p for entry in search_paths for p in entry.split(",") if p]
  paths = [p for p in [os.getcwd(), *paths, DEFAULT_GIN_SEARCH_PATH] if os.path.isdir(p)]
  for path in paths:
    gin.add_config_file_search_path(path)  # for `include` lines inside gin files
  if not gin_files:
    raise ValueError("no --gin_file given; pass a model, a prompt and a run config, e.g. "
                     "--gin_file=models/t5_1_1_base.gin --gin_file=runs/prompt_finetune.gin")
  with _quiet_gin_include_search():
    gin.parse_config_files_and_bindings([_find_gin_file(f, paths) for f in gin_files], list(gin_bindings),
                                        finalize_config=True)


class _DropPathNotFound(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Path not found:")


@contextlib.contextmanager
def _quiet_gin_include_search() -> Iterator[None]:
  """gin logs an ERROR for every search path that lacks an `include`d file before it finds it; those are noise."""
  quiet = _DropPathNotFound()
  logging.getLogger().addFilter(quiet)
  try:
    yield
  finally:
    logging.getLogger().removeFilter(quiet)


def _find_gin_file(name: str, search_paths: Sequence[str]) -> str:
  candidates = [name] if os.path.isabs(name) else [os.path.join(p, name) for p in search_paths]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f"gin file {name} not found in {', '.join(search_paths)}; fix the --gin_file path or "
                          "add its directory with --gin_search_paths")


def one_line(error: BaseException) -> str:
  """An exception as one line: its message without gin's 'In call to configurable' context lines."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  lines = [line for line in lines if not line.startswith("In call to configurable")]
  message = " ".join(lines) or type(error).__name__
  if isinstance(error, SyntaxError) or "gin" in type(error).__module__:
    return f"gin config: {message}; fix the gin file or the --gin flag named"
  if "No configurable matching" in message or "doesn't have a parameter named" in message:
    return f"gin config: {message}; check the name against the gin files (and their imports)"
  if message.startswith("Required bindings for"):
    return f"gin config: {message}; set the missing values, e.g. --gin.MODEL_DIR=\"'/tmp/run'\""
  if "No bindings specified for" in message and "gin.macro" in message:
    macro = message.split("'")[1].split("/")[0]
    return f"gin config: macro {macro} is used but never set; pass --gin.{macro}=VALUE"
  return message


# Errors that mean bad input (a flag, a gin value, a file, data); anything else is a bug and keeps its traceback.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, SyntaxError, NonFiniteLossError)


@contextlib.contextmanager
def errors_as_one_line(program: str) -> Iterator[None]:
  """Prints bad-input errors as `program: error: <one line>` and exits with status 1."""
  try:
    yield
  except INPUT_ERRORS as e:
    print(f"{program}: error: {one_line(e)}", file=sys.stderr)
    sys.exit(1)


def run(argv: Sequence[str], description: str, program: str, configurable: Callable[..., T]) -> T:
  """Parses flags and gin, joins a multi-process job if asked, and calls the gin-configured `configurable`."""
  args = parse_flags(argv, description)
  with errors_as_one_line(program):
    partitioning.initialize_distributed(args.coordinator_address, args.process_count, args.process_index)
    if args.tfds_data_dir:
      pipeline.set_tfds_data_dir(args.tfds_data_dir)
    parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    return gin.get_configurable(configurable)()
