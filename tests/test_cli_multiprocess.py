"""The production multi-host path: two processes through `python -m prompt_tuning_jax.train` (and `.eval`) with
--coordinator_address/--process_count/--process_index, gloo collectives, on a seqio task.

With the default `runs.train.data_sharding='source'` each process's input pipeline is its seqio
`ShardInfo(index=i, num_shards=2)` shard of the shuffled split (as in t5x, sharded at the source, so the global
batch of step k is not the one a single process would draw); the tests check that the hosts' batches are exactly
those shards, disjoint, and form the global batch of every step, and that evaluation on two processes gives a
single process's metrics. With `data_sharding='global'` the two hosts' batches are disjoint and together equal,
row for row, the global batch a single process trains on at every step, and the two runs train the same prompt.
The batches come from the debug hook $PROMPT_TUNING_JAX_BATCH_LOG_DIR (training/input_pipeline.py).
"""

import json
import os
import shutil
import sys

import _training_helpers as helpers
import gin
import numpy as np
import pytest

from prompt_tuning_jax import eval as eval_cli
from prompt_tuning_jax import train as train_cli
from prompt_tuning_jax.data import pipeline
from prompt_tuning_jax.training import checkpointing, input_pipeline

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


def _train_flags(model_dir: str, *extra: str) -> list[str]:
  return [*MODEL_FLAGS, "--gin_file=runs/prompt_finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TRAIN_STEPS={STEPS}", f"--gin.BATCH_SIZE={BATCH}", f"--gin.EVAL_PERIOD={STEPS}",
          f"--gin.SAVE_PERIOD={STEPS}", f"--gin.runs.train.eval_num_examples={EVAL_EXAMPLES}",
          "--gin.runs.train.async_checkpointing=False", "--gin.runs.train.log_period=1", *extra]


def _two_process_training(root, *extra: str) -> tuple[str, str]:
  """(MODEL_DIR, batch log dir) of a 3-step prompt-tuning run on two processes of 2 CPU devices each."""
  model_dir, log_dir = str(root / "model"), str(root / "batches")
  os.makedirs(log_dir)
  _two_processes("prompt_tuning_jax.train", _train_flags(model_dir, *extra),
                 {input_pipeline.BATCH_LOG_DIR_ENV: log_dir})
  return model_dir, log_dir


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """The default (t5x's) source sharding: each process reads its seqio shard."""
  return _two_process_training(tmp_path_factory.mktemp("two_process_cli"))


@pytest.fixture(scope="module")
def two_process_global_run(tmp_path_factory):
  """data_sharding='global': each process reads the whole split and keeps its rows of every global batch."""
  return _two_process_training(tmp_path_factory.mktemp("two_process_global"),
                               "--gin.runs.train.data_sharding='global'", "--gin.SAVE_PERIOD=1")


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
  """(MODEL_DIR, batch log dir) of the same run in this one process (8 CPU devices, the default sharding)."""
  root = tmp_path_factory.mktemp("one_process_cli")
  model_dir, log_dir = str(root / "model"), str(root / "batches")
  _train_here(model_dir, log_dir)
  return model_dir, log_dir


def _train_here(model_dir: str, log_dir: str, *extra: str) -> None:
  """The training CLI in this process (8 devices), logging its batches to `log_dir`."""
  os.makedirs(log_dir)
  gin.clear_config()
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(input_pipeline.BATCH_LOG_DIR_ENV, log_dir)
    try:
      train_cli.main(_train_flags(model_dir, *extra))
    finally:
      gin.clear_config()


def _logged(log_dir: str, process: int, step: int) -> dict[str, np.ndarray]:
  with np.load(os.path.join(log_dir, f"process_{process}_step_{step}.npz"), allow_pickle=False) as batch:
    return dict(batch)


def _train_lines(model_dir: str) -> list[dict]:
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [line for line in map(json.loads, f) if line["split"] == "train"]


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
      batch = _logged(log_dir, i, step)
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
def test_global_data_sharding_hosts_together_feed_the_single_process_global_batch(two_process_global_run,
                                                                                   single_process_run):
  two_dir, two_log = two_process_global_run
  one_dir, one_log = single_process_run
  host = BATCH // 2
  assert sorted(os.listdir(one_log)) == [f"process_0_step_{s}.npz" for s in range(STEPS)]
  drawn = []
  for step in range(STEPS):
    single = _logged(one_log, 0, step)  # the global batch one process trains on at this step
    hosts = [_logged(two_log, i, step) for i in range(2)]
    assert [len(h["encoder_input_tokens"]) for h in hosts] == [host, host]
    assert not set(_rows(hosts[0])) & set(_rows(hosts[1])), f"step {step}: both hosts train on the same example"
    assert set(single) == set(hosts[0]) == set(hosts[1])
    for name, value in single.items():  # process i feeds rows [i * host, (i + 1) * host) of that batch
      assert value.shape[0] == BATCH
      np.testing.assert_array_equal(np.concatenate([hosts[0][name], hosts[1][name]]), value,
                                    err_msg=f"step {step}, {name}")
    drawn += _rows(single)
  assert len(set(drawn)) == STEPS * BATCH  # distinct batches: the comparison is not of one repeated batch
  # The same data in the same order: the two runs train the same prompt, step by step.
  one_loss = [line["loss"] for line in _train_lines(one_dir)]
  two_loss = [line["loss"] for line in _train_lines(two_dir)]
  assert len(one_loss) == len(two_loss) == STEPS
  np.testing.assert_allclose(two_loss, one_loss, rtol=1e-5)
  np.testing.assert_allclose(checkpointing.read_step_prompt(two_dir, STEPS),
                             checkpointing.read_step_prompt(one_dir, STEPS), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_global_data_sharding_resumes_on_another_topology_in_the_same_order(two_process_global_run, tmp_path):
  """A two-process run's checkpoint_1 resumed by one process (8 devices) trains steps 2 and 3 on the rows the two
  processes fed, and ends at their prompt."""
  two_dir, two_log = two_process_global_run
  resumed, log_dir = str(tmp_path / "model"), str(tmp_path / "batches")
  shutil.copytree(two_dir, resumed)
  for step in range(2, STEPS + 1):
    shutil.rmtree(os.path.join(resumed, f"checkpoint_{step}"))
    shutil.rmtree(os.path.join(resumed, "numpy_checkpoints", f"checkpoint_{step}"))
  _train_here(resumed, log_dir, "--gin.runs.train.data_sharding='global'", "--gin.SAVE_PERIOD=1")
  assert sorted(os.listdir(log_dir)) == [f"process_0_step_{s}.npz" for s in range(1, STEPS)]
  for step in range(1, STEPS):
    hosts = [_logged(two_log, i, step) for i in range(2)]
    for name, value in _logged(log_dir, 0, step).items():
      np.testing.assert_array_equal(value, np.concatenate([hosts[0][name], hosts[1][name]]), err_msg=name)
  np.testing.assert_allclose(checkpointing.read_step_prompt(resumed, STEPS),
                             checkpointing.read_step_prompt(two_dir, STEPS), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_source_sharding_is_not_the_single_process_order(two_process_run, single_process_run):
  """The contrast that makes the global-sharding test meaningful: under t5x's source sharding the first global
  batch is not the one a single process draws (so the comparison above can fail)."""
  _, two_log = two_process_run
  _, one_log = single_process_run
  hosts = np.concatenate([_logged(two_log, i, 0)["encoder_input_tokens"] for i in range(2)])
  assert not np.array_equal(hosts, _logged(one_log, 0, 0)["encoder_input_tokens"])


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
