"""`python -m prompt_tuning_jax.train` end to end on the tiny model and a synthetic task, and its bad inputs.

The CLI runs in-process (gin is cleared around each call); every bad input must end in one `train: error:` line
naming the fix, exit status 1 (2 for usage errors), and no checkpoint written or changed.
"""

import glob
import hashlib
import json
import os
import shutil

import _training_helpers  # noqa: F401 (enables the session's compilation cache)
import gin
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning_jax import train
from prompt_tuning_jax.checkpoints import save_t5x_orbax
from prompt_tuning_jax.data import preprocessors, vocab
from prompt_tuning_jax.training import optimizers
from prompt_tuning_jax.training.checkpointing import Checkpoints
from prompt_tuning_jax.training.train_state import TrainState

PROMPT_LENGTH = 4


def _flags(model_dir, **macros):
  values = {"MODEL_DIR": repr(str(model_dir)), "MIXTURE_OR_TASK_NAME": "'synthetic_reverse'",
            "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 8}", "INITIAL_CHECKPOINT_PATH": "None",
            "PROMPT_LENGTH": str(PROMPT_LENGTH), "TRAIN_STEPS": "4", "BATCH_SIZE": "8", "EVAL_PERIOD": "2",
            "SAVE_PERIOD": "2", "config.T5Config.vocab_size": "136",  # the synthetic vocabulary has 135 ids
            "runs.train.eval_num_examples": "8", "runs.train.async_checkpointing": "False",
            "runs.train.log_period": "1"}
  values.update(macros)
  return ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=models/prompt.gin", "--gin_file=prompts/from_uniform.gin",
          "--gin_file=runs/prompt_finetune.gin"] + [f"--gin.{name}={value}" for name, value in values.items()]


@pytest.fixture(autouse=True)
def _fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _run(model_dir, **macros):
  gin.clear_config()
  train.main(_flags(model_dir, **macros))


def _lines(model_dir, split):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [line for line in map(json.loads, f) if line["split"] == split]


def _checkpoint_digest(model_dir) -> dict[str, str]:
  files = sorted(glob.glob(os.path.join(model_dir, "checkpoint_*", "**", "*"), recursive=True))
  return {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files if os.path.isfile(f)}


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
  """MODEL_DIR of one 4-step prompt-tuning run (evaluated and saved every 2 steps)."""
  model_dir = tmp_path_factory.mktemp("cli_run")
  gin.clear_config()
  train.main(_flags(model_dir))
  gin.clear_config()
  return str(model_dir)


@pytest.fixture
def copy_of_trained_dir(trained_dir, tmp_path):
  copy = str(tmp_path / "model_dir")
  shutil.copytree(trained_dir, copy)
  return copy


@pytest.fixture
def model_dir(tmp_path):
  """A MODEL_DIR that already holds checkpoint_2 (written directly, without training), which must stay intact."""
  trainable = {"encoder": {"prompt": {"prompt": {"prompt": jnp.zeros((PROMPT_LENGTH, 32))}}}}
  state = TrainState(step=jnp.asarray(2, jnp.int32), trainable=trainable,
                     opt_state=optimizers.adafactor().init(trainable))
  checkpoints = Checkpoints(str(tmp_path / "model_dir"), async_save=False)
  checkpoints.save(state, {"step": 2})
  checkpoints.close()
  return str(tmp_path / "model_dir")


@pytest.mark.slow
def test_train_cli_leaves_checkpoints_metrics_events_prompt_and_config(trained_dir):
  assert {"checkpoint_2", "checkpoint_4"} <= set(os.listdir(trained_dir))
  assert [line["step"] for line in _lines(trained_dir, "train")] == [1, 2, 3, 4]
  validation = _lines(trained_dir, "validation")
  assert [line["step"] for line in validation] == [2, 4]
  assert {"loss", "token_accuracy", "synthetic_reverse/sequence_accuracy"} <= set(validation[-1])
  assert glob.glob(os.path.join(trained_dir, "train", "events.out.tfevents.*"))
  assert glob.glob(os.path.join(trained_dir, "validation", "events.out.tfevents.*"))
  prompt = np.load(os.path.join(trained_dir, "numpy_checkpoints", "checkpoint_4", "encoder.prompt.prompt.prompt"))
  assert prompt.shape == (PROMPT_LENGTH, 32)
  config = open(os.path.join(trained_dir, "config.gin")).read()
  assert "runs.train" in config and "optimizers.adafactor" in config


@pytest.mark.slow
def test_rerunning_the_command_resumes_from_the_latest_checkpoint(copy_of_trained_dir):
  _run(copy_of_trained_dir, TRAIN_STEPS="6")
  assert [line["step"] for line in _lines(copy_of_trained_dir, "train")] == [1, 2, 3, 4, 5, 6]
  assert "checkpoint_6" in os.listdir(copy_of_trained_dir)


def _expect_one_line_error(capsys, model_dir, fix: str, status: int = 1, **macros):
  before = _checkpoint_digest(model_dir) if os.path.isdir(model_dir) else {}
  with pytest.raises(SystemExit) as exit_info:
    _run(model_dir, **macros)
  assert exit_info.value.code == status
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: error:")]
  assert len(errors) == 1, errors
  assert fix in errors[0], errors[0]
  after = _checkpoint_digest(model_dir) if os.path.isdir(model_dir) else {}
  assert after == before, "a checkpoint was written or changed"
  return errors[0]


def test_unknown_task_is_a_one_line_error(capsys, model_dir):
  _expect_one_line_error(capsys, model_dir, "did you mean synthetic_reverse",
                         MIXTURE_OR_TASK_NAME="'synthetic_revers'")


def test_unwritable_model_dir_is_a_one_line_error(capsys, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  _expect_one_line_error(capsys, str(blocker / "model_dir"), "pass a directory you can write to")


def test_missing_initial_checkpoint_is_a_one_line_error(capsys, model_dir, tmp_path):
  _expect_one_line_error(capsys, model_dir, "does not exist; pass a T5X checkpoint_N",
                         INITIAL_CHECKPOINT_PATH=repr(str(tmp_path / "no_such_checkpoint")))


def test_initial_checkpoint_of_another_model_is_a_one_line_error(capsys, model_dir, tmp_path):
  other = _training_helpers.tiny_model(prompt_length=None)  # the tiny shape, vocab 128, not the run's 136
  params, _ = _training_helpers.init_params(other)
  checkpoint = save_t5x_orbax(params, str(tmp_path / "other_model"), step=1)
  _expect_one_line_error(capsys, model_dir, "vocab", INITIAL_CHECKPOINT_PATH=repr(checkpoint))


def test_prompt_and_inputs_beyond_the_allowed_length_is_a_one_line_error(capsys, model_dir):
  _expect_one_line_error(capsys, model_dir, "shorten the inputs or the prompt", MAX_ENCODER_LENGTH="16")


def test_gin_binding_to_an_unknown_name_is_a_one_line_error(capsys, model_dir):
  _expect_one_line_error(capsys, model_dir, "no_such_parameter", status=2,  # a usage error
                         **{"runs.train.no_such_parameter": "1"})


def test_missing_required_value_is_a_one_line_error(capsys, tmp_path):
  gin.clear_config()
  with pytest.raises(SystemExit):
    train.main([f for f in _flags(tmp_path) if not f.startswith("--gin.MIXTURE_OR_TASK_NAME")])
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: error:")]
  assert len(errors) == 1 and "MIXTURE_OR_TASK_NAME" in errors[0], errors


EMPTY_TASK = "test_training_empty_task"


def _register_empty_task():
  if EMPTY_TASK in seqio.TaskRegistry.names():
    return
  empty = lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
      {"inputs": tf.constant([], tf.string), "targets": tf.constant([], tf.string)})
  seqio.TaskRegistry.add(
      EMPTY_TASK, source=seqio.FunctionDataSource(empty, splits=["train", "validation"]),
      preprocessors=preprocessors.tokenize_and_append_eos(),
      output_features=vocab.output_features(vocab.synthetic_vocabulary()), metric_fns=[])


def test_empty_dataset_is_a_one_line_error(capsys, tmp_path):
  _register_empty_task()
  model_dir = str(tmp_path / "model_dir")
  _expect_one_line_error(capsys, model_dir, "lower BATCH_SIZE", MIXTURE_OR_TASK_NAME=repr(EMPTY_TASK),
                         **{"runs.train.eval_split": "None"})
  assert not glob.glob(os.path.join(model_dir, "checkpoint_*"))


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(capsys, copy_of_trained_dir):
  error = _expect_one_line_error(capsys, copy_of_trained_dir, "lower LEARNING_RATE", TRAIN_STEPS="8",
                                 LEARNING_RATE="1e400")
  assert "diverged at step 5" in error and "checkpoint_4 is the last good checkpoint" in error
  assert not glob.glob(os.path.join(copy_of_trained_dir, "checkpoint_[5-8]"))
