"""`python -m prompt_tuning_jax.eval`: a training checkpoint's prompt and the same prompt as a file score alike."""

import json
import os

import _training_helpers  # noqa: F401 (enables the session's compilation cache)
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning_jax import eval as eval_cli
from prompt_tuning_jax.training import optimizers
from prompt_tuning_jax.training.checkpointing import Checkpoints
from prompt_tuning_jax.training.train_state import TrainState

PROMPT_LENGTH, EMBED = 4, 32


def _flags(prompt_gin, **macros):
  values = {"MIXTURE_OR_TASK_NAME": "'synthetic_reverse'", "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 8}",
            "INITIAL_CHECKPOINT_PATH": "None", "PROMPT_LENGTH": str(PROMPT_LENGTH), "BATCH_SIZE": "8",
            "config.T5Config.vocab_size": "136", "runs.evaluate.num_examples": "8"}
  values.update(macros)
  return ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=models/prompt.gin", f"--gin_file={prompt_gin}",
          "--gin_file=runs/prompt_eval.gin"] + [f"--gin.{name}={value}" for name, value in values.items()]


def _evaluate(capsys, prompt_gin, **macros) -> dict:
  gin.clear_config()
  try:
    eval_cli.main(_flags(prompt_gin, **macros))
  finally:
    gin.clear_config()
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def model_dir(tmp_path):
  """A MODEL_DIR holding checkpoint_3 of a (random) prompt, as a training run leaves it."""
  prompt = jax.random.uniform(jax.random.PRNGKey(7), (PROMPT_LENGTH, EMBED), minval=-0.5, maxval=0.5)
  trainable = {"encoder": {"prompt": {"prompt": {"prompt": prompt}}}}
  state = TrainState(step=jnp.asarray(3, jnp.int32), trainable=trainable,
                     opt_state=optimizers.adafactor().init(trainable))
  checkpoints = Checkpoints(str(tmp_path / "run"), async_save=False)
  checkpoints.save(state, {"step": 3})
  checkpoints.close()
  return str(tmp_path / "run")


@pytest.mark.slow
def test_checkpoint_prompt_and_exported_prompt_file_give_the_same_metrics(capsys, model_dir, tmp_path):
  from_checkpoint = _evaluate(capsys, "prompts/from_uniform.gin", MODEL_DIR=repr(model_dir))
  prompt_file = os.path.join(model_dir, "numpy_checkpoints", "checkpoint_3", "encoder.prompt.prompt.prompt")
  from_file = _evaluate(capsys, "prompts/from_file.gin", MODEL_DIR=repr(str(tmp_path / "eval")),
                        CHECKPOINT_PATH="None", PROMPT_FILE=repr(prompt_file))
  assert {"loss", "token_accuracy", "synthetic_reverse/sequence_accuracy"} <= set(from_checkpoint)
  for name, value in from_checkpoint.items():
    np.testing.assert_allclose(from_file[name], value, rtol=1e-6, err_msg=name)
  lines = [json.loads(line) for line in open(os.path.join(model_dir, "eval_metrics.jsonl"))]
  assert lines[-1]["step"] == 3 and lines[-1]["split"] == "validation"
  assert not os.path.exists(os.path.join(model_dir, "metrics.jsonl"))  # the training run's file stays its own
  assert os.path.isfile(os.path.join(model_dir, "eval_config.gin"))


def test_checkpoint_of_another_prompt_length_is_a_one_line_error(capsys, model_dir):
  gin.clear_config()
  with pytest.raises(SystemExit) as exit_info:
    eval_cli.main(_flags("prompts/from_uniform.gin", MODEL_DIR=repr(model_dir), PROMPT_LENGTH="5"))
  gin.clear_config()
  assert exit_info.value.code == 1
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eval: error:")]
  assert len(errors) == 1 and "set the PROMPT_LENGTH and model size it was trained with" in errors[0], errors
