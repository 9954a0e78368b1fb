"""Keeps TensorFlow's and XLA's C++ start-up banners off a CLI's terminal.

Importing TensorFlow and starting jax's backends print lines a user cannot act on (oneDNN notes, "Could not
find cuda drivers", "failed call to cuInit" on a machine without a GPU), some of them before any log-level
setting is read. The CLIs import and start both with the process's stderr file descriptor pointed at /dev/null,
and set TF_CPP_MIN_LOG_LEVEL=2 (keep errors) unless the user chose a level. Python exceptions are unaffected:
stderr is restored before they propagate. Set PROMPT_TUNING_JAX_NATIVE_LOGS=1 to see everything.

Imports nothing heavy itself, so the CLIs can call it first.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

SHOW_ENV = "PROMPT_TUNING_JAX_NATIVE_LOGS"


@contextlib.contextmanager
def silenced() -> Iterator[None]:
  """Points file descriptor 2 at /dev/null for the duration (no-op with PROMPT_TUNING_JAX_NATIVE_LOGS=1)."""
  if os.environ.get(SHOW_ENV) == "1":
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def quiet_imports() -> None:
  """Imports TensorFlow and jax with their banners silenced and hides GPUs from TensorFlow (it only reads data;
  as in t5x, so it neither probes CUDA again nor takes GPU memory). Call before anything else imports them."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with silenced():
    import jax  # noqa: F401
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


def start_backends_quietly() -> None:
  """Starts jax's backends (after `jax.distributed.initialize`, if any) with the CUDA probe lines silenced."""
  import jax

  with silenced():
    jax.devices()
