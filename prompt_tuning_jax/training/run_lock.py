"""One training run per MODEL_DIR: a lock file held while a run trains.

`MODEL_DIR/.lock` is created exclusively and holds JSON {host, pid, started, token} naming the holder. On a local
disk the creation is atomic (O_CREAT | O_EXCL). On a bucket (gs://, through `tf.io.gfile`) there is no exclusive
create: the lock is written after checking that none exists, then read back, and the run goes ahead only if it
still holds its own token, which leaves a window of one round trip in which two starting runs could both pass.
A lock whose holder is a dead process on this host is stale and taken over with a warning; a lock of another
host cannot be checked from here, so it is reported with the command to remove it if that run is gone.
Only process 0 of a multi-process job takes the lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator

import jax
import tensorflow as tf

from prompt_tuning_jax.training import preemption

LOCK_FILE = ".lock"


class ModelDirLockedError(RuntimeError):
  """Another run holds MODEL_DIR's lock."""


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by another user
  return True


def _read(path: str) -> dict | None:
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      holder = json.loads(f.read())
    return holder if isinstance(holder, dict) else {}
  except tf.errors.NotFoundError:
    return None
  except (ValueError, tf.errors.OpError):
    return {}  # a lock that is being written, or garbled: still a lock


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
          f"{holder.get('started', 'at an unknown time')}")


def _create_local(path: str, content: str) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    f.write(content)
  return True


def _create_remote(path: str, content: str, token: str) -> bool:
  if tf.io.gfile.exists(path):
    return False
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(content)
  holder = _read(path)
  return bool(holder) and holder.get("token") == token


def _is_stale(holder: dict) -> bool:
  return holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and (
      holder["pid"] != os.getpid() and not _process_alive(holder["pid"]))


def acquire(model_dir: str, warn: Callable[[str], None]) -> str:
  """Takes MODEL_DIR's lock; returns its token (for `release`).

  Raises:
    ModelDirLockedError: another live run holds it (one line naming the holder and what to do).
  """
  path = os.path.join(model_dir, LOCK_FILE)
  token = uuid.uuid4().hex
  content = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")})
  create = _create_local if "://" not in path else lambda p, c: _create_remote(p, c, token)
  for _ in range(2):  # a second try after removing a stale lock
    if create(path, content):
      return token
    holder = _read(path)
    if holder is None:
      continue  # released in between
    if _is_stale(holder):
      warn(f"taking over the stale lock {path} of {_describe(holder)}, which is no longer running")
      with contextlib.suppress(tf.errors.NotFoundError):
        tf.io.gfile.remove(path)
      continue
    raise ModelDirLockedError(
        f"MODEL_DIR {model_dir} is in use by another run ({_describe(holder)}); wait for it to finish or stop it, "
        f"or use another MODEL_DIR (if that run is gone, delete {path})")
  raise ModelDirLockedError(f"could not take the lock {path}: another run keeps creating it; use another MODEL_DIR")


def release(model_dir: str, token: str) -> None:
  """Removes MODEL_DIR's lock if this run still holds it."""
  path = os.path.join(model_dir, LOCK_FILE)
  holder = _read(path)
  if holder and holder.get("token") == token:
    with contextlib.suppress(tf.errors.NotFoundError):
      tf.io.gfile.remove(path)


@contextlib.contextmanager
def held(model_dir: str, warn: Callable[[str], None]) -> Iterator[None]:
  """Holds MODEL_DIR's lock for the duration. Every process calls it; process 0 takes the lock and all of them
  raise `ModelDirLockedError` if it could not."""
  token, error = None, None
  if jax.process_index() == 0:
    try:
      token = acquire(model_dir, warn)
    except ModelDirLockedError as e:
      error = e
  if preemption.any_process(error is not None):
    raise error or ModelDirLockedError(f"process 0 could not lock MODEL_DIR {model_dir}; see its error")
  try:
    yield
  finally:
    if token is not None:
      release(model_dir, token)
