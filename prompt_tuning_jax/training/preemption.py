"""Stopping a run cleanly on SIGTERM (preemption) or Ctrl-C, on one process or on all processes of a job.

During the training loop the first SIGTERM or SIGINT only raises a flag: the loop finishes its step, saves a
checkpoint of it (with its export) and raises `TrainingInterrupted`; the CLI turns that into one line and exit
status 128 + signal (143 for SIGTERM, 130 for SIGINT). A second signal exits at once. Outside the loop (start-up,
compilation, restore) a signal interrupts right away, as `Interrupted`.

Several processes must save the same step: each loop iteration at which the loop waits for the devices anyway
(metric reports, saves) is a sync point where the processes OR their flags (`any_process`), so all stop after the
same step. A single process stops after the step in flight.

Nothing waits for ever once a stop was asked for: a watchdog ends the process `timeout_s` seconds after the first
signal, with a line saying so, if the save has not finished by then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

import jax
import numpy as np
from jax.experimental import multihost_utils

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_TIMEOUT_S = 300.0


def exit_status(signum: int) -> int:
  """The shell's status for a process ended by `signum`: 128 + signal number (130 SIGINT, 143 SIGTERM)."""
  return 128 + int(signum)


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


class Interrupted(Exception):
  """A stop signal arrived outside the training loop (start-up, restore, compilation): nothing new to save."""

  def __init__(self, signum: int):
    super().__init__(f"{signal_name(signum)} received before training started; nothing new was saved")
    self.signum = signum


class TrainingInterrupted(Exception):
  """The loop stopped after `step` on a signal and saved `checkpoint_<step>` (`saved` is False if it could not)."""

  def __init__(self, step: int, signum: int, saved: bool = True):
    super().__init__(f"interrupted at step {step}")
    self.step, self.signum, self.saved = step, signum, saved


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any of them (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))
  return bool(np.max(flags))


def _write_line(line: str) -> None:
  # os.write: safe inside a signal handler and unaffected by buffered or redirected sys.stderr.
  os.write(sys.stderr.fileno(), (line + "\n").encode())


def _exit_now(program: str, message: str, status: int) -> None:
  _write_line(f"{program}: {message}")
  os._exit(status)


class GracefulStop:
  """While active, the first SIGTERM/SIGINT sets `requested`; the second exits at once (see the module doc).

  Args:
    program: the name printed before messages ('train').
    timeout_s: seconds after the first signal before the process is ended even if the save is still running.
  """

  def __init__(self, program: str = "train", timeout_s: float = DEFAULT_TIMEOUT_S):
    self.program = program
    self.timeout_s = timeout_s
    self.signum: int | None = None
    self._watchdog: threading.Timer | None = None
    self._finished = threading.Event()

  @property
  def requested(self) -> bool:
    """Whether this process received a stop signal."""
    return self.signum is not None

  def should_stop(self, sync: bool) -> bool:
    """Whether to stop after the current step. `sync` (True at the same steps on every process) makes every
    process agree; between sync points a multi-process job keeps going, a single process stops at once."""
    if jax.process_count() == 1:
      return self.requested
    return any_process(self.requested) if sync else False

  def stop_signal(self) -> int:
    """The signal to report: this process's, or SIGTERM when another process of the job received it."""
    return self.signum if self.signum is not None else int(signal.SIGTERM)

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self.signum is not None:
      _exit_now(self.program, f"{signal_name(signum)} received again; exiting at once without saving",
                exit_status(signum))
    self.signum = signum
    _write_line(f"{self.program}: {signal_name(signum)} received; finishing the current step and saving a "
                "checkpoint (send it again to exit at once)")
    self._watchdog = threading.Timer(self.timeout_s, self._give_up)
    self._watchdog.daemon = True
    self._watchdog.start()

  def _give_up(self) -> None:
    if not self._finished.is_set():
      _exit_now(self.program, f"saving after {signal_name(self.stop_signal())} did not finish within "
                f"{self.timeout_s:.0f} s; exiting without it (the previous checkpoint is intact)",
                exit_status(self.stop_signal()))

  def finished(self) -> None:
    """The save after a stop completed: the watchdog need not end the process."""
    self._finished.set()
    if self._watchdog is not None:
      self._watchdog.cancel()


@contextlib.contextmanager
def graceful_stop(program: str = "train", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[GracefulStop]:
  """Installs a `GracefulStop` for SIGTERM and SIGINT for the duration (only on the main thread, where Python
  delivers signals; elsewhere it never triggers) and restores the previous handlers after."""
  stop = GracefulStop(program, timeout_s)
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return
  previous = {signum: signal.signal(signum, stop._handle) for signum in STOP_SIGNALS}
  try:
    yield stop
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    stop.finished()


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
  del frame
  raise Interrupted(signum)


@contextlib.contextmanager
def interrupt_with_exception(program: str, timeout_s: float = 60.0) -> Iterator[None]:
  """Outside the loop: SIGTERM and SIGINT raise `Interrupted` where the program is. Should unwinding hang (e.g.
  threads of a checkpoint library blocked at shutdown), a watchdog ends the process after `timeout_s`."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {signum: signal.signal(signum, _raise_interrupted) for signum in STOP_SIGNALS}
  try:
    yield
  except Interrupted as e:
    _arm_exit_watchdog(program, timeout_s, exit_status(e.signum))
    raise
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def _arm_exit_watchdog(program: str, timeout_s: float, status: int) -> None:
  started = time.monotonic()

  def give_up() -> None:
    _exit_now(program, f"shutdown did not finish within {time.monotonic() - started:.0f} s; exiting", status)

  timer = threading.Timer(timeout_s, give_up)
  timer.daemon = True
  timer.start()
