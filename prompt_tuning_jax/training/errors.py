"""The CLIs' exit statuses, and the error that means "the command line is wrong".

  0    the run finished (or had nothing left to do)
  1    bad input or environment: a file, checkpoint, dataset, MODEL_DIR in use, disk full, a peer missing, NaN loss
  2    usage: a flag, a gin file or binding, a macro's name, type or range; fix the command and run it again
  130  stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM (preemption): the current step was saved; re-run to resume

Every non-zero status comes with exactly one `<program>: error: ...` line on stderr that names the fix.
"""

from __future__ import annotations

from typing import Any

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2


class UsageError(ValueError):
  """A flag or gin value is wrong (exit status 2)."""


def check_int(name: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> None:
  """Raises UsageError unless `value` is an int (not a bool) of at least `minimum` (or None if `allow_none`).

  Args:
    name: how the user sets it, e.g. 'TRAIN_STEPS' or 'runs.train.eval_num_examples'.
  """
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int):
    example = max(minimum or 0, 1)
    raise UsageError(f"{name} must be an integer{' or None' if allow_none else ''}, got {value!r} "
                     f"({type(value).__name__}); pass e.g. --gin.{name}={example}")
  if minimum is not None and value < minimum:
    at_least = "positive" if minimum == 1 else f"at least {minimum}"
    raise UsageError(f"{name} must be {at_least}, got {value}; pass e.g. --gin.{name}={max(minimum, 1)}")
