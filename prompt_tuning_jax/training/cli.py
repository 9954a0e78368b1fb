"""t5x-style command lines: gin flags, multi-process flags, and one-line errors.

  --gin_file=FILE            (repeatable) gin files, searched in --gin_search_paths and gin_configs/
  --gin.NAME=VALUE           one binding, e.g. --gin.MODEL_DIR="'/tmp/run'" (values are gin literals)
  --gin_bindings='A = 1'     (repeatable) bindings as gin text
  --gin_search_paths=a,b     extra directories for gin files and their includes
  --tfds_data_dir=DIR        where TFDS datasets are prepared
  --coordinator_address, --process_count, --process_index   multi-process jobs (or the environment, see
                             `partitioning.initialize_distributed`); --distributed_timeout_s bounds the wait
                             for the other processes

Errors end in one `<program>: error: ...` line and the exit statuses of `training/errors.py` (1 bad input,
2 usage, 130/143 interrupted after saving).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import gin
from gin import config as gin_config

from prompt_tuning_jax.data import pipeline
from prompt_tuning_jax.training import native_logs, partitioning, preemption
from prompt_tuning_jax.training.errors import EXIT_BAD_INPUT, EXIT_USAGE, UsageError
from prompt_tuning_jax.training.run_lock import ModelDirLockedError
from prompt_tuning_jax.training.trainer import NonFiniteLossError

T = TypeVar("T")
# The repository's gin_configs/ (a source checkout), so `--gin_file=runs/prompt_finetune.gin` resolves.
DEFAULT_GIN_SEARCH_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "gin_configs")


HELP_EPILOG = """\
gin bindings: --gin.NAME=VALUE binds a macro or a parameter; VALUE is a gin literal, so strings need quotes:
  --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=1000 --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}"
  --gin.runs.train.eval_num_examples=64 --gin.INITIAL_CHECKPOINT_PATH=None
main macros: MODEL_DIR, MIXTURE_OR_TASK_NAME, MIXTURE_OR_TASK_MODULE, TASK_FEATURE_LENGTHS, TRAIN_STEPS,
  BATCH_SIZE, EVAL_PERIOD, SAVE_PERIOD, INITIAL_CHECKPOINT_PATH, PROMPT_LENGTH, CLASS_LABELS, LEARNING_RATE,
  DROPOUT_RATE, MAX_ENCODER_LENGTH (eval: CHECKPOINT_PATH, EVAL_OUTPUT_DIR, EVAL_SPLIT; prompt files: PROMPT_FILE)
exit status: 0 done, 1 bad input (files, data, MODEL_DIR in use, disk), 2 usage (flags, gin names, macro values),
  130 / 143 stopped by SIGINT / SIGTERM after saving the current step (re-run the same command to resume)
"""


class _Parser(argparse.ArgumentParser):
  """argparse whose usage errors are one line (no usage block), exit status 2."""

  def error(self, message: str) -> None:  # type: ignore[override]
    print(f"{self.prog}: error: {message}; see --help", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def parse_flags(argv: Sequence[str], description: str, program: str | None = None) -> argparse.Namespace:
  """Parses the flags above; `--gin.NAME=VALUE` becomes the binding `NAME = VALUE`."""
  parser = _Parser(prog=program, description=description, epilog=HELP_EPILOG,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding text (repeatable)")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="comma-separated directories searched for gin files")
  parser.add_argument("--tfds_data_dir", default=None, help="directory of prepared TFDS datasets")
  parser.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process)")
  parser.add_argument("--process_count", type=int, default=None, help="number of processes (multi-process)")
  parser.add_argument("--process_index", type=int, default=None, help="this process's index (multi-process)")
  parser.add_argument("--distributed_timeout_s", type=float, default=300.0,
                      help="seconds to wait for every process of a multi-process job to join (default 300)")
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
  """Parses gin files then bindings (later ones win), resolving files in `search_paths` and gin_configs/.

  Raises:
    UsageError: a binding sets a macro that no gin file defines or uses (with close matches), or a known macro
      has a value of the wrong type.
  """
  paths = [p for entry in search_paths for p in entry.split(",") if p]
  paths = [p for p in [os.getcwd(), *paths, DEFAULT_GIN_SEARCH_PATH] if os.path.isdir(p)]
  for path in paths:
    gin.add_config_file_search_path(path)  # for `include` lines inside gin files
  if not gin_files:
    raise UsageError("no --gin_file given; pass a model, a prompt and a run config, e.g. "
                     "--gin_file=models/t5_1_1_base.gin --gin_file=runs/prompt_finetune.gin")
  with _quiet_gin_include_search():
    gin.parse_config_files_and_bindings([_find_gin_file(f, paths) for f in gin_files], [], finalize_config=False)
    defined_by_files = set(_macro_values())
    gin.parse_config_files_and_bindings([], list(gin_bindings), finalize_config=False)
  _check_bound_macros_are_used(gin_bindings, defined_by_files | _referenced_macros())
  check_macro_types()
  gin.finalize()


def _macro_values() -> dict[str, Any]:
  """{macro name: its bound value} of the parsed config (values may be references such as %OTHER)."""
  return {scope: binding["value"] for (scope, selector), binding in gin_config._CONFIG.items()
          if selector == "gin.macro" and "value" in binding}


def _referenced_macros() -> set[str]:
  """Names of the macros some binding of the parsed config refers to (`%NAME`)."""
  found: set[str] = set()

  def walk(value: Any) -> None:
    if isinstance(value, gin_config.ConfigurableReference):
      if value.selector == "gin.macro":
        found.add(value.scoped_selector.rsplit("/", 1)[0])
    elif isinstance(value, dict):
      for item in value.values():
        walk(item)
    elif isinstance(value, (list, tuple, set)):
      for item in value:
        walk(item)

  for binding in gin_config._CONFIG.values():
    walk(dict(binding))
  return found


_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", re.MULTILINE)


def _check_bound_macros_are_used(gin_bindings: Sequence[str], known: set[str]) -> None:
  for binding in gin_bindings:
    for name in _MACRO_BINDING.findall(binding):
      if name in known:
        continue
      close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
      hint = f"did you mean {' or '.join(close)}?" if close else f"known macros: {', '.join(sorted(known)[:12])}"
      raise UsageError(f"the binding {name} = ... sets a macro that no gin file uses; {hint}")


# Known macros: the types their literal values must have (references like %MODEL_DIR or @f() are not checked).
_STR, _INT, _NUMBER, _DICT = (str,), (int,), (int, float), (dict,)
MACRO_TYPES: dict[str, tuple[tuple[type, ...], bool, str]] = {
    # name: (types, None allowed, example)
    "MODEL_DIR": (_STR, False, "\"'/tmp/run'\""), "MIXTURE_OR_TASK_NAME": (_STR, True, "\"'super_glue_rte_v102'\""),
    "MIXTURE_OR_TASK_MODULE": (_STR, True, "\"'prompt_tuning_jax.data.tasks'\""),
    "INITIAL_CHECKPOINT_PATH": (_STR, True, "\"'/ckpts/checkpoint_1100000'\""),
    "CHECKPOINT_PATH": (_STR, True, "\"'/tmp/run/checkpoint_1000'\""), "EVAL_OUTPUT_DIR": (_STR, False, "\"'/tmp/eval'\""),
    "EVAL_SPLIT": (_STR, False, "\"'validation'\""), "PROMPT_FILE": (_STR, False, "\"'/tmp/prompt.npy'\""),
    "TASK_FEATURE_LENGTHS": (_DICT, False, "\"{'inputs': 512, 'targets': 8}\""),
    "TRAIN_STEPS": (_INT, False, "1000"), "BATCH_SIZE": (_INT, False, "32"), "EVAL_PERIOD": (_INT, False, "1000"),
    "SAVE_PERIOD": (_INT, False, "1000"), "PROMPT_LENGTH": (_INT, False, "100"),
    "MAX_ENCODER_LENGTH": (_INT, True, "512"), "LEARNING_RATE": (_NUMBER, False, "0.3"),
    "DROPOUT_RATE": (_NUMBER, False, "0.1"),
}


def check_macro_types() -> None:
  """Raises UsageError for a known macro whose literal value has the wrong type (e.g. TRAIN_STEPS = '5')."""
  for name, value in _macro_values().items():
    if name not in MACRO_TYPES or isinstance(value, gin_config.ConfigurableReference):
      continue
    types, allow_none, example = MACRO_TYPES[name]
    if value is None and allow_none:
      continue
    if isinstance(value, bool) or not isinstance(value, types):
      kind = {_STR: "a string (in quotes)", _INT: "an integer", _NUMBER: "a number", _DICT: "a dict"}[types]
      raise UsageError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r} "
                       f"({type(value).__name__}); pass e.g. --gin.{name}={example}")


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
  raise UsageError(f"gin file {name} not found in {', '.join(search_paths)}; fix the --gin_file path or add its "
                   "directory with --gin_search_paths")


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


def _is_gin_error(error: BaseException, message: str) -> bool:
  return (isinstance(error, SyntaxError) or "gin" in type(error).__module__
          or message.startswith("gin config:"))


# Errors that mean bad input (a flag, a gin value, a file, data); anything else is a bug and keeps its traceback.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, SyntaxError, NonFiniteLossError,
                                                 ModelDirLockedError)


def exit_status(error: BaseException, message: str) -> int:
  """2 for usage errors (flags, gin), 1 for any other bad input; see `training/errors.py`."""
  return EXIT_USAGE if isinstance(error, UsageError) or _is_gin_error(error, message) else EXIT_BAD_INPUT


@contextlib.contextmanager
def errors_as_one_line(program: str) -> Iterator[None]:
  """Prints bad-input errors as `program: error: <one line>` with the exit status of `exit_status`, and
  interruptions as one line with status 128 + signal."""
  try:
    yield
  except preemption.TrainingInterrupted as e:
    saved = f"saved checkpoint_{e.step}" if e.saved else "nothing new was saved"
    print(f"{program}: interrupted at step {e.step}; {saved}; re-run the same command to resume", file=sys.stderr)
    sys.exit(preemption.exit_status(e.signum))
  except preemption.Interrupted as e:
    print(f"{program}: interrupted by {preemption.signal_name(e.signum)} before training started; nothing new "
          "was saved; re-run the same command to resume", file=sys.stderr)
    sys.exit(preemption.exit_status(e.signum))
  except KeyboardInterrupt:
    print(f"{program}: interrupted; nothing new was saved; re-run the same command to resume", file=sys.stderr)
    sys.exit(preemption.exit_status(signal.SIGINT))
  except INPUT_ERRORS as e:
    message = one_line(e)
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(exit_status(e, message))


def _join_job(args: argparse.Namespace, program: str) -> None:
  """jax.distributed.initialize, bounded: when a peer never joins, jax aborts the process with a C++ stack trace;
  a watchdog ends it first with one line saying what to check."""
  flags = (args.coordinator_address, args.process_count, args.process_index)
  if all(flag is None for flag in flags):
    partitioning.initialize_distributed()
    return
  if any(flag is None for flag in flags):
    raise UsageError(f"multi-process flags are incomplete: --coordinator_address={args.coordinator_address} "
                     f"--process_count={args.process_count} --process_index={args.process_index}; give all three "
                     "or none")
  timeout = args.distributed_timeout_s

  def give_up() -> None:
    os.write(sys.stderr.fileno(), (
        f"{program}: error: process {args.process_index} of {args.process_count} could not reach all processes "
        f"through the coordinator {args.coordinator_address} within {timeout:.0f} s; start every process with the "
        "same --coordinator_address and --process_count and a distinct --process_index, check that process 0 "
        "runs and its port is reachable, or raise --distributed_timeout_s\n").encode())
    os._exit(EXIT_BAD_INPUT)

  watchdog = threading.Timer(timeout, give_up)
  watchdog.daemon = True
  watchdog.start()
  try:
    partitioning.initialize_distributed(args.coordinator_address, args.process_count, args.process_index,
                                        initialization_timeout=int(timeout) + 60)
  finally:
    watchdog.cancel()


def run(argv: Sequence[str], description: str, program: str, configurable: Callable[..., T]) -> T:
  """Parses flags and gin, joins a multi-process job if asked, and calls the gin-configured `configurable`."""
  args = parse_flags(argv, description, program)
  with errors_as_one_line(program), preemption.interrupt_with_exception(program):
    _join_job(args, program)
    native_logs.start_backends_quietly()
    if args.tfds_data_dir:
      pipeline.set_tfds_data_dir(args.tfds_data_dir)
    parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    return gin.get_configurable(configurable)()
