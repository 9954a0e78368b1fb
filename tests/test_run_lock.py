"""One run per MODEL_DIR: the lock file, on a local disk and on a gfile filesystem without exclusive create."""

import json
import os
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

from prompt_tuning_jax.training import run_lock


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


@pytest.mark.parametrize("root", ["local", "ram"])
def test_a_second_run_is_refused_until_the_first_releases_the_lock(tmp_path, root):
  model_dir = str(tmp_path) if root == "local" else f"ram://lock_test_{os.getpid()}"
  tf.io.gfile.makedirs(model_dir)
  token = run_lock.acquire(model_dir, warn=pytest.fail)
  holder = json.loads(tf.io.gfile.GFile(os.path.join(model_dir, run_lock.LOCK_FILE)).read())
  assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  # The same process counts as alive: a second run in it (or in any live process) is refused.
  with pytest.raises(run_lock.ModelDirLockedError, match=rf"is in use by another run \(pid {os.getpid()} on host"):
    run_lock.acquire(model_dir, warn=pytest.fail)
  run_lock.release(model_dir, token)
  assert not tf.io.gfile.exists(os.path.join(model_dir, run_lock.LOCK_FILE))
  run_lock.release(model_dir, run_lock.acquire(model_dir, warn=pytest.fail))


def test_a_stale_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path):
  dead = _dead_pid()
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead}))
  warnings = []
  token = run_lock.acquire(str(tmp_path), warn=warnings.append)
  assert len(warnings) == 1 and f"pid {dead}" in warnings[0] and "no longer running" in warnings[0]
  run_lock.release(str(tmp_path), token)


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": _dead_pid()}))
  with pytest.raises(run_lock.ModelDirLockedError, match="on host elsewhere.*delete .*/.lock"):
    run_lock.acquire(str(tmp_path), warn=pytest.fail)


def test_release_leaves_another_runs_lock_alone(tmp_path):
  token = run_lock.acquire(str(tmp_path), warn=pytest.fail)
  run_lock.release(str(tmp_path), "someone else's token")
  assert (tmp_path / run_lock.LOCK_FILE).exists()
  run_lock.release(str(tmp_path), token)
