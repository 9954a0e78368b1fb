"""The offline demo: its packaged model, gin stack, MODEL_DIR handling, plot, and a short run end to end."""

import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest

from prompt_tuning_jax import checkpoints as checkpoint_io
from prompt_tuning_jax import demo
from prompt_tuning_jax.data import pipeline, synthetic, vocab
from prompt_tuning_jax.inference import decoding
from prompt_tuning_jax.model import t5
from prompt_tuning_jax.training import metrics_writer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"inputs": 12, "targets": 10}  # demo/task.gin's TASK_FEATURE_LENGTHS
NUM_EXAMPLES = 64


@pytest.fixture(scope="module")
def packaged_model():
  """(model, params) of the packaged demo checkpoint, the model built from the demo's gin stack."""
  demo.parse_demo_gin(demo.prompt_tuning_gin("uniform"), ["MODEL_DIR = '/unused'"])
  try:
    model = gin.get_configurable(t5.Transformer)(prompt_factory=None)
  finally:
    gin.clear_config()
  params, _ = checkpoint_io.load_params(demo.pretrained_checkpoint_path())
  return model, params


def _exact_match(model, params, task: str) -> float:
  """Greedy exact match (%) on the first NUM_EXAMPLES validation examples of a synthetic task."""
  examples = pipeline.get_task_dataset(task, LENGTHS, "validation").take(NUM_EXAMPLES).as_numpy_iterator()
  examples = list(examples)
  predictions = decoding.decode_examples(model, params, examples, LENGTHS["inputs"], LENGTHS["targets"],
                                         vocab.synthetic_vocabulary())
  targets = [ex["targets_pretokenized"].decode() for ex in examples]
  return 100.0 * np.mean([p == t for p, t in zip(predictions, targets, strict=True)])


def test_packaged_checkpoint_matches_the_demo_model_config(packaged_model):
  model, _ = packaged_model
  _, inferred = checkpoint_io.load_params(demo.pretrained_checkpoint_path())
  # Raises on a mismatch.
  checkpoint_io.check_config(model.config, inferred, demo.pretrained_checkpoint_path())


def test_packaged_checkpoint_is_small():
  size = sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(demo.ASSETS_DIR) for name in names)
  assert size < 10 * 2**20


@pytest.mark.parametrize("task", sorted(synthetic.TARGET_FNS))
def test_packaged_model_does_each_prefixed_task(packaged_model, task):
  model, params = packaged_model
  assert _exact_match(model, params, synthetic.task_name(task)) >= 90.0


def test_packaged_model_cannot_reverse_without_the_prefix(packaged_model):
  # The demo's premise: only a prompt can tell the frozen model which task is asked.
  model, params = packaged_model
  assert _exact_match(model, params, synthetic.task_name("reverse", taskless=True)) < 20.0


def test_pretrained_checkpoint_path_rejects_a_directory_without_a_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="holds 0 checkpoint_N directories"):
    demo.pretrained_checkpoint_path(str(tmp_path))


def test_demo_gin_stack_binds_the_task_without_its_prefix_and_a_20_token_prompt():
  demo.parse_demo_gin(demo.prompt_tuning_gin("sampled_vocab"), ["MODEL_DIR = '/unused'"])
  try:
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "taskless_synthetic_reverse"
    assert gin.query_parameter("%PROMPT_LENGTH") == 20
    model = gin.get_configurable(t5.Transformer)()
  finally:
    gin.clear_config()
  assert model.prompt_factory is not None
  assert model.config.dropout_rate == 0.0


@pytest.mark.parametrize("flag, message", [("--ensemble_size=0", "--ensemble_size must be at least 1"),
                                           ("--serve_tasks=sort,nope", r"unknown tasks \['nope'\]")])
def test_bad_serving_flags_are_refused_before_anything_runs(tmp_path, flag, message):
  with pytest.raises(ValueError, match=message):
    demo.run(demo.parse_flags([f"--model_dir={tmp_path}/run", flag]))
  assert not (tmp_path / "run").exists()


def test_model_dir_that_the_demo_did_not_make_is_refused(tmp_path):
  (tmp_path / "precious.txt").write_text("keep me")
  with pytest.raises(ValueError, match="is not a demo run"):
    demo.prepare_model_dir(str(tmp_path), fresh=True)
  assert (tmp_path / "precious.txt").exists()


def test_fresh_deletes_a_previous_demo_run(tmp_path):
  (tmp_path / demo.MARKER_FILE).write_text("{}")
  (tmp_path / "old_result.json").write_text("{}")
  demo.prepare_model_dir(str(tmp_path), fresh=True)
  assert os.listdir(tmp_path) == []


def test_read_metrics_keeps_the_later_line_of_a_repeated_step(tmp_path):
  lines = [{"step": 10, "split": "train", "loss": 2.0}, {"step": 10, "split": "train", "loss": 1.0},
           {"step": 10, "split": "validation", "loss": 3.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  assert [m["loss"] for m in metrics_writer.read_metrics(str(tmp_path))] == [1.0, 3.0]


def test_plot_curves_writes_a_png_of_the_logged_metrics(tmp_path):
  key = "taskless_synthetic_reverse/sequence_accuracy"
  lines = [{"step": 10, "split": "train", "loss": 1.0}, {"step": 20, "split": "train", "loss": 0.5},
           {"step": 20, "split": "validation", "loss": 0.4, key: 80.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  path = demo.plot_curves(str(tmp_path / "curves.png"), str(tmp_path), {key: 0.0}, {key: 0.0},
                          {key: 95.0}, key)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_short_demo_run_learns_a_prompt_that_beats_no_prompt(tmp_path):
  model_dir = tmp_path / "demo_run"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's run has
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning_jax.demo", f"--model_dir={model_dir}", "--train_steps=40",
       "--eval_period=40", f"--eval_examples={NUM_EXAMPLES}", "--serve_tasks=last", "--serve_steps=20",
       "--ensemble_size=2", "--ensemble_steps=20", "--serve_examples=32"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((model_dir / demo.RESULTS_FILE).read_text())
  accuracy = f"{results['task']}/sequence_accuracy"
  assert results["learned_prompt"][accuracy] >= results["no_prompt"][accuracy] + 50.0
  assert results["learned_prompt"]["loss"] < results["initial_prompt"]["loss"]
  assert np.load(model_dir / demo.PROMPT_NPY_FILE, allow_pickle=False).shape == (20, 128)
  assert (model_dir / demo.PEFT_DIR / "adapter_model.safetensors").is_file()
  assert (model_dir / demo.CURVES_FILE).stat().st_size > 0
  assert (model_dir / demo.PROMPT_TUNING_DIR / "metrics.jsonl").is_file()
  assert "learned prompt (40 steps)" in result.stdout
  serving = results["serving"]
  assert set(serving["tasks"]) == {"reverse", "last"}  # results.json sorts its keys
  # Served in mixed batches, every task gets exactly the predictions it gets alone.
  assert all(row["identical"] and row["mixed"] == row["alone"] for row in serving["tasks"].values())
  table = serving["ensemble"]
  assert set(table) == {"reverse seed 1", "reverse seed 2", "mean", "best", "ensemble"}
  assert table["best"] == max(table[f"reverse seed {k}"] for k in (1, 2))
  assert "prompt ensemble for reverse: 2 prompts in one batched pass" in result.stdout
