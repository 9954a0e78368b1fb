"""metrics.jsonl and TensorBoard events."""

import glob
import json

from prompt_tuning_jax.training.metrics_writer import MetricsWriter


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write_scalars(10, "train", {"loss": 1.5, "token_accuracy": 0.25})
  writer.write_scalars(10, "validation", {"loss": float("nan")})
  writer.close()
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert lines == [{"step": 10, "split": "train", "loss": 1.5, "token_accuracy": 0.25},
                   {"step": 10, "split": "validation", "loss": "nan"}]
  assert glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))
  assert glob.glob(str(tmp_path / "validation" / "events.out.tfevents.*"))


def test_disabled_writer_writes_nothing(tmp_path):
  writer = MetricsWriter(str(tmp_path), enabled=False)
  writer.write_scalars(1, "train", {"loss": 1.0})
  writer.write_text(1, "train", "config", "x")
  writer.close()
  assert list(tmp_path.iterdir()) == []
