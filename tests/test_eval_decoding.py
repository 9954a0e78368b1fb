"""Evaluation with t5x's eval decoding (beam search, 1 beam, alpha 0.6) and rank classification beside it."""

import functools
import json
import os

import _training_helpers  # noqa: F401 (enables the session's compilation cache)
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning_jax import demo, prompts
from prompt_tuning_jax import eval as eval_cli
from prompt_tuning_jax.data import pipeline, tasks
from prompt_tuning_jax.inference import decoding, scoring
from prompt_tuning_jax.model import Transformer, config_for_size
from prompt_tuning_jax.training import evaluation, losses, partitioning

TASK = "taskless_synthetic_majority"
LENGTHS = {"inputs": 12, "targets": 4}


def test_beam_and_rank_classification_metrics_equal_direct_decoding_and_ranking():
  model = Transformer(config_for_size("tiny", vocab_size=136),
                      prompt_factory=functools.partial(prompts.PrefixPrompt, length=4))
  tokens = jnp.ones((1, 12), jnp.int32)
  params = nn.meta.unbox(jax.jit(functools.partial(model.init, enable_dropout=False))(
      jax.random.PRNGKey(3), tokens, tokens[:, :4], tokens[:, :4])["params"])
  mesh = partitioning.create_mesh(mesh_shape=(1, 1), devices=jax.devices()[:1])
  evaluate = evaluation.make_evaluate(
      model=model, loss_config=losses.LossConfig(), mesh=mesh, global_batch_size=8, mixture_or_task_name=TASK,
      task_feature_lengths=LENGTHS, num_examples=12, decoding_config=evaluation.DecodingConfig("beam", 1, 0.6),
      rank_classification=True)
  with partitioning.mesh_context(mesh, partitioning.standard_logical_axis_rules()):
    metrics = evaluate({}, params)

  # The same 12 examples (two batches, the second padded), decoded and ranked directly.
  examples = list(pipeline.get_task_dataset(TASK, LENGTHS, "validation").take(12).as_numpy_iterator())
  features = next(pipeline.get_dataset(TASK, LENGTHS, "validation", shuffle=False, seed=None, num_epochs=1)
                  .batch(12).as_numpy_iterator())
  vocabulary = tasks.get_mixture_or_task(TASK).output_features["targets"].vocabulary
  beams, _ = decoding.decode(model, params, features["encoder_input_tokens"], max_decode_length=4, method="beam",
                             num_beams=1, alpha=0.6)
  decoded = pipeline.compute_metrics(TASK, examples, [vocabulary.decode([int(t) for t in row])
                                                      for row in np.asarray(beams[:, 0])])
  labels = tasks.get_class_labels(TASK)
  best, _ = scoring.rank_classify(model, params, features["encoder_input_tokens"],
                                  scoring.candidate_tokens(vocabulary, labels, 4))
  ranked = pipeline.compute_metrics(TASK, examples, [labels[i] for i in np.asarray(best)])
  assert decoded and ranked
  for name, value in decoded.items():
    assert metrics[f"{TASK}/{name}"] == pytest.approx(value), name
  for name, value in ranked.items():
    assert metrics[f"rank_classification/{TASK}/{name}"] == pytest.approx(value), name


def _flags(task, **macros):
  values = {"MIXTURE_OR_TASK_NAME": repr(task), "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 4}",
            "INITIAL_CHECKPOINT_PATH": repr(demo.pretrained_checkpoint_path()), "PROMPT_REGEX": "None",
            "CHECKPOINT_PATH": "None", "BATCH_SIZE": "16", "runs.evaluate.num_examples": "32"}
  values.update(macros)
  return ["--gin_file=demo/t5_1_1_demo.gin", "--gin_file=runs/prompt_eval.gin"] + [
      f"--gin.{name}={value}" for name, value in values.items()]


def _run_eval(argv):
  gin.clear_config()
  try:
    eval_cli.main(argv)
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_eval_cli_reports_rank_classification_beside_beam_decoded_metrics(capsys, tmp_path):
  """The packaged demo model (pretrained on the prefixed synthetic tasks) evaluated on 'majority: ...'."""
  _run_eval(_flags("synthetic_majority", MODEL_DIR=repr(str(tmp_path)), DECODE_METHOD="'beam'",
                   RANK_CLASSIFICATION="True"))
  metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  decoded = metrics["synthetic_majority/sequence_accuracy"]
  ranked = metrics["rank_classification/synthetic_majority/sequence_accuracy"]
  assert ranked >= 90 and decoded >= 90, metrics  # percent; the pretrained model knows this task
  assert "rank_classification/synthetic_majority/accuracy_red" in metrics
  written = [json.loads(line) for line in open(os.path.join(tmp_path, "eval_metrics.jsonl"))][-1]
  assert written["rank_classification/synthetic_majority/sequence_accuracy"] == pytest.approx(ranked)
  config = open(os.path.join(tmp_path, "eval_config.gin")).read()
  assert "DECODE_METHOD = 'beam'" in config and "RANK_CLASSIFICATION = True" in config


@pytest.mark.parametrize("macros, message", [
    (dict(RANK_CLASSIFICATION="True", MIXTURE_OR_TASK_NAME="'synthetic_reverse'"),
     "no task with class labels"),
    (dict(DECODE_METHOD="'sample'"), "evaluation decodes with 'greedy' or 'beam'"),
    (dict(DECODE_METHOD="'beam'", EVAL_NUM_BEAMS="0"), "num_beams must be an int >= 1"),
])
def test_bad_eval_decoding_settings_are_one_line_errors(capsys, tmp_path, macros, message):
  with pytest.raises(SystemExit) as exit_info:
    _run_eval(_flags("synthetic_majority", MODEL_DIR=repr(str(tmp_path)), **macros))
  assert exit_info.value.code == 1
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eval: error:")]
  assert len(errors) == 1 and message in errors[0], errors


def test_training_evaluations_can_beam_decode_and_rank_classify(tmp_path):
  from prompt_tuning_jax import train

  values = {"MODEL_DIR": repr(str(tmp_path)), "MIXTURE_OR_TASK_NAME": repr(TASK),
            "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 4}", "INITIAL_CHECKPOINT_PATH": "None",
            "PROMPT_LENGTH": "4", "TRAIN_STEPS": "2", "BATCH_SIZE": "8", "EVAL_PERIOD": "2", "SAVE_PERIOD": "2",
            "config.T5Config.vocab_size": "136", "runs.train.eval_num_examples": "8",
            "runs.train.async_checkpointing": "False", "DECODE_METHOD": "'beam'", "RANK_CLASSIFICATION": "True"}
  gin.clear_config()
  try:
    train.main(["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=models/prompt.gin",
                "--gin_file=prompts/from_uniform.gin", "--gin_file=runs/prompt_finetune.gin"]
               + [f"--gin.{name}={value}" for name, value in values.items()])
  finally:
    gin.clear_config()
  lines = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  validation = [line for line in lines if line["split"] == "validation"][-1]
  assert f"{TASK}/sequence_accuracy" in validation
  assert f"rank_classification/{TASK}/sequence_accuracy" in validation
  assert "DECODE_METHOD = 'beam'" in open(os.path.join(tmp_path, "config.gin")).read()


def test_rank_classification_covers_every_super_glue_classification_task():
  """The proportional SuperGLUE mixture on mocked TFDS data: each classification task's class labels are ranked
  and scored with its own metrics; ReCoRD (free-text answers) is left to decoding."""
  from _data_helpers import mock_tfds, using_test_vocabulary

  from prompt_tuning_jax.data import superglue

  datasets = {f"super_glue/{b.tfds_config}:{superglue.TFDS_VERSION}": b.splits or ("train", "validation", "test")
              for b in superglue.BENCHMARKS.values()}
  model = Transformer(config_for_size("tiny", vocab_size=256))
  tokens = jnp.ones((1, 8), jnp.int32)
  params = nn.meta.unbox(jax.jit(functools.partial(model.init, enable_dropout=False))(
      jax.random.PRNGKey(0), tokens, tokens, tokens)["params"])
  mesh = partitioning.create_mesh(mesh_shape=(1, 1), devices=jax.devices()[:1])
  with using_test_vocabulary(), mock_tfds(datasets, num_examples=4):
    evaluate = evaluation.make_evaluate(
        model=model, loss_config=losses.LossConfig(), mesh=mesh, global_batch_size=4,
        mixture_or_task_name=superglue.MIXTURE_NAME, task_feature_lengths={"inputs": 64, "targets": 8},
        decode_metrics=False, rank_classification=True)
    with partitioning.mesh_context(mesh, partitioning.standard_logical_axis_rules()):
      metrics = evaluate({}, params)
  ranked = {name.split("/")[1] for name in metrics if name.startswith("rank_classification/")}
  classification = {superglue.task_name(b.name) for b in superglue.BENCHMARKS.values()
                    if b.label_names and b.num_train_examples}
  assert ranked == classification, metrics
  assert "rank_classification/super_glue_cb_v102/f1_macro" in metrics
  assert "rank_classification/super_glue_multirc_v102/f1a" in metrics
