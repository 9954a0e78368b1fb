"""Shared pieces of the CLI reliability tests: the tiny run's flags, in-process and subprocess CLI calls, and a
hash listing of a directory (to prove a refused run wrote nothing)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys

import gin
import jax.numpy as jnp
import pytest

from prompt_tuning_jax import eval as eval_cli
from prompt_tuning_jax import train
from prompt_tuning_jax.training import optimizers
from prompt_tuning_jax.training.checkpointing import Checkpoints
from prompt_tuning_jax.training.train_state import TrainState

PROMPT_LENGTH = 4
EMBED = 32  # the tiny model's
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT_INIT_FILE = "--gin_file=prompts/from_uniform.gin"


def train_flags(model_dir, *, prompt_init: str = PROMPT_INIT_FILE, **macros) -> list[str]:
  """The tiny model prompt-tuned on synthetic_reverse: 4 steps, evaluated and saved every 2."""
  values = {"MODEL_DIR": repr(str(model_dir)), "MIXTURE_OR_TASK_NAME": "'synthetic_reverse'",
            "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 8}", "INITIAL_CHECKPOINT_PATH": "None",
            "PROMPT_LENGTH": str(PROMPT_LENGTH), "TRAIN_STEPS": "4", "BATCH_SIZE": "8", "EVAL_PERIOD": "2",
            "SAVE_PERIOD": "2", "config.T5Config.vocab_size": "136", "runs.train.eval_num_examples": "8",
            "runs.train.log_period": "1"}
  values.update(macros)
  return (["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=models/prompt.gin", prompt_init,
           "--gin_file=runs/prompt_finetune.gin"]
          + [f"--gin.{name}={value}" for name, value in values.items() if value is not None])


def run_in_process(argv: list[str], program=train) -> tuple[int, str]:
  """Runs a CLI's main in this process -> (exit status, stderr). gin is cleared before and after."""
  gin.clear_config()
  stderr = io.StringIO()
  status = 0
  try:
    with contextlib.redirect_stderr(stderr):
      program.main(argv)
  except SystemExit as e:
    status = e.code if isinstance(e.code, int) else 1
  finally:
    gin.clear_config()
  return status, stderr.getvalue()


def run_eval_in_process(argv: list[str]) -> tuple[int, str]:
  return run_in_process(argv, eval_cli)


def run_subprocess(argv: list[str], module: str = "prompt_tuning_jax.train",
                   timeout: float = 300) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own defaults must keep stderr clean
  return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def tree_digest(root) -> dict[str, str]:
  """{relative path: sha256 (files) or 'dir'} of everything under `root` ({} if it does not exist)."""
  digest = {}
  for directory, subdirs, files in os.walk(root):
    for name in subdirs:
      digest[os.path.relpath(os.path.join(directory, name), root)] = "dir"
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return digest


def write_checkpoint(model_dir: str, step: int = 2, prompt_length: int = PROMPT_LENGTH,
                     position: dict | None = None) -> str:
  """Writes checkpoint_<step> of a prompt-only train state (zeros) directly, without training."""
  trainable = {"encoder": {"prompt": {"prompt": {"prompt": jnp.zeros((prompt_length, EMBED))}}}}
  state = TrainState(step=jnp.asarray(step, jnp.int32), trainable=trainable,
                     opt_state=optimizers.adafactor().init(trainable))
  checkpoints = Checkpoints(model_dir, async_save=False)
  checkpoints.save(state, position or {"step": step})
  checkpoints.close()
  return model_dir


def one_error_line(stderr: str, program: str = "train") -> str:
  """The only line of `stderr` (asserting there is exactly one and no traceback)."""
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert len(lines) == 1, lines[-20:]
  assert lines[0].startswith(f"{program}: error: "), lines[0]
  return lines[0]


@pytest.fixture(autouse=True)
def fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()
