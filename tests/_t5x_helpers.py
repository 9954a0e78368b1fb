"""Shared by the t5x tests: subprocess runs of t5x's and our CLIs.

The runs use the packaged demo model (a T5X legacy checkpoint at step 5000) and `taskless_synthetic_reverse`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

import filelock
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = REPO_ROOT / "gin_configs"
DEMO_CHECKPOINT = REPO_ROOT / "prompt_tuning_jax" / "demo_assets" / "checkpoint_5000"
DEMO_STEP = 5000
TASK = "taskless_synthetic_reverse"
LENGTHS = "{'inputs': 12, 'targets': 10}"
PROMPT_LENGTH = 20
NUMPY_PROMPT = "encoder.prompt.prompt.prompt"


def run_cli(module: str, flags: Sequence[str]) -> None:
  """Runs `python -m module flags...` from the repository root on one CPU device; fails with its output's tail."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as both stacks' runs compare
  result = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, f"python -m {module} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


def gin_flags(**bindings: str) -> list[str]:
  """`--gin.NAME=VALUE` flags; values are gin literals (strings already quoted)."""
  return [f"--gin.{name}={value}" for name, value in bindings.items()]


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[pathlib.Path], None]
                ) -> pathlib.Path:
  """A directory `make(dir)` fills once per test session, even across xdist workers (file lock + marker)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # shared by the workers of one session
  directory = root / name
  with filelock.FileLock(str(root / f"{name}.lock")):
    done = directory / ".done"
    if not done.exists():
      shutil.rmtree(directory, ignore_errors=True)  # a failed attempt's outputs must not be resumed from
      directory.mkdir(parents=True)
      make(directory)
      done.write_text("done")
  return directory


def read_jsonl(path: pathlib.Path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
