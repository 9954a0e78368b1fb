"""Crashes and interruptions of `python -m prompt_tuning_jax.train`: each ends in a state from which re-running the
same command finishes bit-identical to an uninterrupted run.

SIGTERM mid-run (the preemption signal), a damaged latest checkpoint, a checkpoint committed without its export,
a stale lock, a failed save; two runs on one MODEL_DIR are refused in test_bad_inputs.py.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import _training_helpers  # noqa: F401 (enables the session's compilation cache)
import orbax.checkpoint as ocp
import pytest
from _cli_helpers import REPO, fresh_gin, one_error_line, run_in_process, train_flags, tree_digest  # noqa: F401

EXPORT = os.path.join("numpy_checkpoints", "checkpoint_{}", "encoder.prompt.prompt.prompt")


def _export(model_dir, step) -> bytes:
  with open(os.path.join(model_dir, EXPORT.format(step)), "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """MODEL_DIR of an uninterrupted 4-step run (checkpoints 2 and 4, each evaluated)."""
  model_dir = str(tmp_path_factory.mktemp("finished") / "run")
  code, stderr = run_in_process(train_flags(model_dir))
  assert code == 0, stderr[-3000:]
  return model_dir


@pytest.fixture
def copy_of_finished_run(finished_run, tmp_path):
  copy = str(tmp_path / "run")
  shutil.copytree(finished_run, copy)
  return copy


def _truncate_a_data_file(state_dir):
  data_dir = os.path.join(state_dir, "d")  # the OCDBT data files orbax reads (after merging the processes')
  target = max((os.path.join(data_dir, name) for name in os.listdir(data_dir)), key=os.path.getsize)
  with open(target, "r+b") as f:
    f.truncate(os.path.getsize(target) // 3)


DAMAGE = {
    "truncated_data_file": _truncate_a_data_file,
    "empty_directory": lambda state_dir: (shutil.rmtree(os.path.dirname(state_dir)),
                                          os.makedirs(os.path.dirname(state_dir))),
    "missing_metadata": lambda state_dir: os.remove(os.path.join(state_dir, "_METADATA")),
    "empty_metadata": lambda state_dir: open(os.path.join(state_dir, "_METADATA"), "w").close(),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_is_moved_aside_and_the_rerun_is_bit_identical(copy_of_finished_run, damage):
  model_dir = copy_of_finished_run
  uninterrupted = _export(model_dir, 4)
  DAMAGE[damage](os.path.join(model_dir, "checkpoint_4", "state"))
  code, stderr = run_in_process(train_flags(model_dir))
  assert code == 0, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  warnings = [line for line in stderr.splitlines() if "cannot be restored" in line]
  assert len(warnings) == 1 and "checkpoint_4" in warnings[0] and "damaged_checkpoint_4" in warnings[0], warnings
  assert "resuming from" in stderr and "checkpoint_2" in stderr
  assert os.path.isdir(os.path.join(model_dir, "damaged_checkpoint_4"))  # kept, not deleted
  assert _export(model_dir, 4) == uninterrupted


@pytest.mark.slow
def test_missing_or_partial_exports_are_rewritten_from_their_checkpoints(copy_of_finished_run):
  model_dir = copy_of_finished_run
  exports = {step: _export(model_dir, step) for step in (2, 4)}
  shutil.rmtree(os.path.join(model_dir, "numpy_checkpoints", "checkpoint_4"))
  with open(os.path.join(model_dir, EXPORT.format(2)), "r+b") as f:
    f.truncate(40)
  code, stderr = run_in_process(train_flags(model_dir))  # the same command: nothing left to train
  assert code == 0, stderr[-3000:]
  assert "nothing to do" in stderr
  assert {step: _export(model_dir, step) for step in (2, 4)} == exports


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(copy_of_finished_run):
  model_dir = copy_of_finished_run
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  with open(os.path.join(model_dir, ".lock"), "w") as f:
    f.write(f'{{"host": "{socket.gethostname()}", "pid": {dead.pid}, "token": "old", "started": "earlier"}}')
  code, stderr = run_in_process(train_flags(model_dir, TRAIN_STEPS="5"))
  assert code == 0, stderr[-3000:]
  assert "taking over the stale lock" in stderr and f"pid {dead.pid}" in stderr
  assert not os.path.exists(os.path.join(model_dir, ".lock"))  # released at the end
  assert os.path.isdir(os.path.join(model_dir, "checkpoint_5"))
  assert os.path.isfile(os.path.join(model_dir, "config_until_4.gin"))  # the first run's config, kept


@pytest.mark.slow
def test_a_failed_save_names_the_directory_and_cause_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  model_dir = str(tmp_path / "run")
  real_save = ocp.StandardCheckpointHandler.async_save
  calls = []

  async def failing_save(self, directory, *args, **kwargs):
    calls.append(directory)
    if len(calls) == 2:  # checkpoint_4: the disk is full now
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await real_save(self, directory, *args, **kwargs)

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing_save)
  code, stderr = run_in_process(train_flags(model_dir))
  lines = [line for line in stderr.splitlines() if line.startswith("train: error:")]
  assert code == 1 and len(lines) == 1, stderr[-3000:]
  assert f"saving checkpoint_4 to {model_dir} failed (No space left on device)" in lines[0], lines[0]
  assert "checkpoint_2 is the latest intact checkpoint" in lines[0]
  assert "Traceback" not in stderr
  assert sorted(os.listdir(os.path.join(model_dir, "numpy_checkpoints"))) == ["checkpoint_2"]  # no export of 4
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", real_save)
  code, stderr = run_in_process(train_flags(model_dir))  # space freed: the same command resumes from 2
  assert code == 0, stderr[-3000:]
  assert "resuming from" in stderr and "checkpoint_2" in stderr


def _wait_for_training(model_dir: str, process: subprocess.Popen, timeout: float = 240) -> None:
  metrics = os.path.join(model_dir, "metrics.jsonl")
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise AssertionError(f"the run ended early:\n{process.communicate()[1][-3000:]}")
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
      return
    time.sleep(0.5)
  raise AssertionError("the run did not start training in time")


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_rerun_is_bit_identical(tmp_path):
  model_dir = str(tmp_path / "run")
  long_run = dict(TRAIN_STEPS="100000", EVAL_PERIOD="0", SAVE_PERIOD="100000",
                  **{"runs.train.eval_split": "None"})
  # The same 8 host devices as this process (conftest.py): the re-run and the reference run here, and a mesh of
  # another size would sum the batch in another order.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own defaults must keep stderr clean
  process = subprocess.Popen([sys.executable, "-m", "prompt_tuning_jax.train", *train_flags(model_dir, **long_run)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_training(model_dir, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 143, stderr[-3000:]
  assert "Traceback" not in stderr
  for noise in ("cuInit", "oneDNN", "cudart_stub", "tracked_metric", "cache_dataset_ops", "absl::InitializeLog"):
    assert noise not in stderr, f"{noise!r} on stderr of a normal CPU run:\n{stderr[-3000:]}"
  match = re.search(r"train: interrupted at step (\d+); saved checkpoint_(\d+); re-run the same command to resume",
                    stderr)
  assert match and match.group(1) == match.group(2), stderr[-2000:]
  step = int(match.group(1))
  assert os.path.isdir(os.path.join(model_dir, f"checkpoint_{step}"))
  assert os.path.isfile(os.path.join(model_dir, EXPORT.format(step)))
  assert not os.path.exists(os.path.join(model_dir, ".lock"))
  # Re-run (to 3 steps beyond the interruption) and compare with an uninterrupted run of as many steps.
  finish = dict(long_run, TRAIN_STEPS=str(step + 3))
  code, stderr = run_in_process(train_flags(model_dir, **finish))
  assert code == 0 and f"checkpoint_{step}" in stderr, stderr[-3000:]
  reference = str(tmp_path / "uninterrupted")
  code, stderr = run_in_process(train_flags(reference, **finish))
  assert code == 0, stderr[-3000:]
  assert _export(model_dir, step + 3) == _export(reference, step + 3)


def test_a_second_sigint_exits_at_once(tmp_path):
  script = (
      "import os, signal, time\n"
      "from prompt_tuning_jax.training import preemption\n"
      "with preemption.graceful_stop('train', timeout_s=60) as stop:\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  assert stop.requested and stop.should_stop(sync=True)\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(30)\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 130, result.stderr
  assert "SIGINT received again; exiting at once without saving" in result.stderr
