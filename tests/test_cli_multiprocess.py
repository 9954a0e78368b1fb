"""The production multi-host path: two processes through `python -m prompt_tuning_jax.train` (and `.eval`) with
--coordinator_address/--process_count/--process_index, gloo collectives, on a seqio task.

Each process's input pipeline is its seqio `ShardInfo(index=i, num_shards=2)` shard of the shuffled split (as in
t5x, sharded at the source, so the global batch of step k is not the one a single process would draw); the test
checks that the hosts' batches are exactly those shards, disjoint, and form the global batch of every step, and
that evaluation on two processes gives a single process's metrics. The batches come from the debug hook
$PROMPT_TUNING_JAX_BATCH_LOG_DIR (training/input_pipeline.py).
"""

import json
import os
import sys

import _training_helpers as helpers
import gin
import numpy as np
import pytest

from prompt_tuning_jax import eval as eval_cli
from prompt_tuning_jax.data import pipeline
from prompt_tuning_jax.training import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 400
STEPS, BATCH, EVAL_EXAMPLES = 3, 8, 12  # 12 eval examples: the second eval batch of 8 is partial
TASK, LENGTHS = "synthetic_reverse", {"inputs": 16, "targets": 8}
MODEL_FLAGS = ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=models/prompt.gin",
               "--gin_file=prompts/from_uniform.gin", "--gin.config.T5Config.vocab_size=136",
               "--gin.PROMPT_LENGTH=4", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
               f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.INITIAL_CHECKPOINT_PATH=None"]


def _two_processes(module: str, flags: list[str], env_extra: dict[str, str]) -> None:
  """`python -m module` as processes 0 and 1 of a job, with the CLI's multi-process flags."""
  helpers.run_two_processes(
      lambda coordinator, i: [sys.executable, "-m", module, f"--coordinator_address={coordinator}",
                              "--process_count=2", f"--process_index={i}", *flags],
      TIMEOUT_S, cwd=ROOT, env_extra=env_extra)


def _validation(model_dir: str, metrics_file: str = "metrics.jsonl") -> dict:
  """The last validation line of a training run's metrics.jsonl (an eval run's: eval_metrics.jsonl)."""
  with open(os.path.join(model_dir, metrics_file)) as f:
    lines = [line for line in map(json.loads, f) if line["split"] == "validation"]
  return lines[-1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """(MODEL_DIR, batch log dir) of a 3-step prompt-tuning run on two processes of 2 CPU devices each."""
  root = tmp_path_factory.mktemp("two_process_cli")
  model_dir, log_dir = str(root / "model"), str(root / "batches")
  os.makedirs(log_dir)
  flags = [*MODEL_FLAGS, "--gin_file=runs/prompt_finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
           f"--gin.TRAIN_STEPS={STEPS}", f"--gin.BATCH_SIZE={BATCH}", f"--gin.EVAL_PERIOD={STEPS}",
           f"--gin.SAVE_PERIOD={STEPS}", f"--gin.runs.train.eval_num_examples={EVAL_EXAMPLES}",
           "--gin.runs.train.async_checkpointing=False"]
  _two_processes("prompt_tuning_jax.train", flags, {input_pipeline.BATCH_LOG_DIR_ENV: log_dir})
  return model_dir, log_dir


def _rows(batch) -> list[bytes]:
  """One key per example: its encoder, decoder-input and target tokens."""
  return [b"".join(np.ascontiguousarray(batch[name][i]).tobytes() for name in
                   ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"))
          for i in range(len(batch["encoder_input_tokens"]))]


@pytest.mark.slow
def test_two_hosts_read_disjoint_seqio_shards_that_form_every_global_batch(two_process_run):
  _, log_dir = two_process_run
  host = BATCH // 2
  expected = []
  for i in range(2):  # seqio shard i of 2, as a plain seqio pipeline with this seed yields it (runs.train checks
    # for emptiness on a separate copy, so training sees the first iteration's order, as t5x does)
    shard = pipeline.get_dataset(TASK, LENGTHS, "train", shuffle=True, seed=0, shard_id=i, num_shards=2,
                                 num_epochs=None)
    batches = input_pipeline.train_batches(shard, host, 0)
    expected.append([next(batches) for _ in range(STEPS)])
  seen = []
  for step in range(STEPS):
    logged = []
    for i in range(2):
      with np.load(os.path.join(log_dir, f"process_{i}_step_{step}.npz"), allow_pickle=False) as batch:
        batch = dict(batch)
      assert len(batch["encoder_input_tokens"]) == host
      for name, value in expected[i][step].items():  # process i's rows are exactly seqio shard i's next batch
        np.testing.assert_array_equal(batch[name], value, err_msg=f"process {i}, step {step}, {name}")
      logged.append(_rows(batch))
    # Disjoint: no example of one host's batch is in the other's (the synthetic examples are distinct here).
    assert not set(logged[0]) & set(logged[1]), f"step {step}: both hosts train on the same example"
    seen.append(logged[0] + logged[1])  # the global batch of this step
  # Over the run too: within an epoch no example is drawn twice, by the same or the other host.
  everything = [row for batch in seen for row in batch]
  assert len(set(everything)) == len(everything) == STEPS * BATCH
  assert sorted(os.listdir(log_dir)) == sorted(f"process_{i}_step_{s}.npz" for i in range(2) for s in range(STEPS))


@pytest.mark.slow
def test_two_host_evaluation_gives_the_single_process_metrics(two_process_run, tmp_path, capsys):
  model_dir, _ = two_process_run
  two_hosts = _validation(model_dir)
  assert two_hosts["step"] == STEPS and two_hosts["num_examples"] == EVAL_EXAMPLES
  def eval_flags(output_dir):
    return [*MODEL_FLAGS, "--gin_file=runs/prompt_eval.gin", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.EVAL_OUTPUT_DIR='{output_dir}'", f"--gin.BATCH_SIZE={BATCH}",
            f"--gin.runs.evaluate.num_examples={EVAL_EXAMPLES}"]

  # The same checkpoint evaluated by one process (8 devices, in this test process) ...
  gin.clear_config()
  try:
    eval_cli.main(eval_flags(tmp_path / "one"))
  finally:
    gin.clear_config()
  one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  # ... and by two processes through the eval CLI.
  _two_processes("prompt_tuning_jax.eval", eval_flags(tmp_path / "two"), {})
  two_eval = _validation(str(tmp_path / "two"), "eval_metrics.jsonl")
  metrics = [name for name in one if isinstance(one[name], float | int)]
  assert {"loss", "token_accuracy", "num_examples"} <= set(metrics), metrics
  for name in metrics:
    np.testing.assert_allclose(two_hosts[name], one[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(two_eval[name], one[name], rtol=1e-5, err_msg=name)
