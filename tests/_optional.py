"""Optional test dependencies (the oracles: torch, transformers, peft, t5x) and their one skip reason.

A test that needs one is decorated `@needs("torch", "transformers")` (a whole file: `pytestmark =
parity_marks(...)`, modules imported with `optional`): it is marked `parity` and, when a module is missing, skipped
with `SKIP_REASON`. `conftest.py` turns such skips into a failure of the session when
PROMPT_TUNING_JAX_REQUIRE_PARITY=1 (CI sets it), so the parity tests cannot vanish silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import pytest

SKIP_REASON = "optional test dependency missing"
INSTALL_HINT = {"t5x": "bash ../shared/vendor/t5x/install.sh .venv/bin/python; see the README's 'Running under t5x'"}


def optional(name: str) -> ModuleType | None:
  """The module, or None when it is not installed (so a test file still collects without it)."""
  try:
    return importlib.import_module(name)
  except ImportError:
    return None


def missing(*names: str) -> list[str]:
  return [name for name in names if optional(name) is None]


def reason(names: list[str]) -> str:
  hints = sorted({INSTALL_HINT.get(name, "pip install -e '.[test]'") for name in names})
  return f"{SKIP_REASON}: {', '.join(names)} ({'; '.join(hints)})"


def parity_marks(*names: str) -> list[pytest.MarkDecorator]:
  """`pytestmark` of a file whose every test needs the named modules: `parity`, and the skip when one is absent."""
  absent = missing(*names)
  return [pytest.mark.parity, pytest.mark.skipif(bool(absent), reason=reason(absent))]


def needs(*names: str) -> Callable[[Callable], Callable]:
  """Marks one test `parity` and skips it, with the one reason, unless every named module imports."""

  def decorate(test: Callable) -> Callable:
    for mark in parity_marks(*names):
      test = mark(test)
    return test

  return decorate


def require(name: str) -> ModuleType:
  """Inside a test (or fixture): the module, or a skip with the one reason."""
  module = optional(name)
  if module is None:
    pytest.skip(reason([name]))
  return module
