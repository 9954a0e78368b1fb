"""Where training reports go: MODEL_DIR/metrics.jsonl, TensorBoard events, and a progress bar.

Only process 0 writes; other processes get disabled writers so the loop can call them unconditionally. Files go
through `tf.io.gfile`, so MODEL_DIR may be a local path or a bucket (gs://), as in t5x.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping

import tensorflow as tf
import tqdm
from clu import metric_writers

METRICS_FILE = "metrics.jsonl"
EVAL_METRICS_FILE = "eval_metrics.jsonl"  # `python -m prompt_tuning_jax.eval`'s, kept apart from the training run's


def read_metrics(model_dir: str) -> list[dict]:
  """The lines of MODEL_DIR/metrics.jsonl, by step and split; for a step logged twice (a resumed run), the later
  line wins. [] when there is no such file."""
  path = os.path.join(model_dir, METRICS_FILE)
  if not tf.io.gfile.exists(path):
    return []
  latest: dict[tuple[int, str], dict] = {}
  with tf.io.gfile.GFile(path, "r") as f:
    for line in f:
      entry = json.loads(line)
      latest[(entry["step"], entry["split"])] = entry
  return sorted(latest.values(), key=lambda e: (e["step"], e["split"]))


class MetricsWriter:
  """Appends {'step', 'split', metric: value} lines to MODEL_DIR/metrics.jsonl and scalars to MODEL_DIR/<split>/.

  Resumed runs append to the same file, so a step may appear twice after a restart; the later line wins.

  Args:
    model_dir: where the file and the TensorBoard directories go.
    enabled: False on processes other than 0.
    metrics_file: the JSON-lines file's name (evaluation runs use EVAL_METRICS_FILE).
    summary_prefix: prefixed to each split's TensorBoard directory (evaluation runs: 'eval_').
  """

  def __init__(self, model_dir: str, enabled: bool = True, metrics_file: str = METRICS_FILE,
               summary_prefix: str = ""):
    self._model_dir = model_dir
    self._enabled = enabled
    self._metrics_file = metrics_file
    self._summary_prefix = summary_prefix
    self._summary_writers: dict[str, metric_writers.SummaryWriter] = {}

  def _summary_writer(self, split: str) -> metric_writers.SummaryWriter:
    if split not in self._summary_writers:
      self._summary_writers[split] = metric_writers.SummaryWriter(
          os.path.join(self._model_dir, self._summary_prefix + split))
    return self._summary_writers[split]

  def write_scalars(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    """Records scalar metrics of `split` ('train', 'validation', ...) at `step`."""
    if not self._enabled:
      return
    values = {name: float(value) for name, value in metrics.items()}
    line = {"step": int(step), "split": split}
    # JSON has no NaN/Infinity; write them as strings so every line parses.
    line.update({name: value if math.isfinite(value) else str(value) for name, value in values.items()})
    with tf.io.gfile.GFile(os.path.join(self._model_dir, self._metrics_file), "a") as f:
      f.write(json.dumps(line) + "\n")
    writer = self._summary_writer(split)
    writer.write_scalars(int(step), values)
    writer.flush()

  def write_text(self, step: int, split: str, name: str, text: str) -> None:
    """Records a text summary (e.g. the gin config) for TensorBoard's text tab."""
    if not self._enabled:
      return
    writer = self._summary_writer(split)
    writer.write_texts(int(step), {name: text})
    writer.flush()

  def close(self) -> None:
    for writer in self._summary_writers.values():
      writer.close()
    self._summary_writers.clear()


class ProgressBar:
  """A tqdm bar over training steps showing loss and tokens/s; tqdm adds the ETA."""

  def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                          disable=not enabled, file=sys.stderr, desc="train")

  def update(self, steps: int, loss: float, tokens_per_second: float) -> None:
    """Advances by `steps` and shows the latest loss (per target token) and throughput."""
    self._bar.set_postfix(loss=f"{loss:.4f}", tokens_per_s=f"{tokens_per_second:,.0f}", refresh=False)
    self._bar.update(steps)

  def write(self, message: str) -> None:
    """Prints a line above the bar (evaluation results, checkpoint notes)."""
    if not self._bar.disable:
      self._bar.write(message, file=sys.stderr)

  def close(self) -> None:
    self._bar.close()
