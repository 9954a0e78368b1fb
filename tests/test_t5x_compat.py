"""`python -m t5x.train` / `t5x.eval` with gin_configs/t5x/, step for step against our own trainer and eval.

The runs: the packaged demo model (a T5X checkpoint at step 5000) frozen, a 20-token prompt, 3 steps of batch 8
on taskless_synthetic_reverse, a checkpoint (and prompt export) every step. t5x's run starts from the uniform
initializer; ours from the prompt t5x exported at step 5000, so both train the same prompt on the same batches.
"""

import glob

import _t5x_helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _optional import optional, parity_marks
from flax import traverse_util

from prompt_tuning_jax import checkpoints

pytestmark = parity_marks("t5x")
# Our t5x plug-in imports t5x: None without it (the tests then skip with the one reason).
t5x_compat_models = optional("prompt_tuning_jax.t5x_compat.models") if optional("t5x") else None
t5x_compat_optimizers = optional("prompt_tuning_jax.t5x_compat.optimizers") if optional("t5x") else None

STEPS = 3
BATCH = 8
EVAL_EXAMPLES = 32
STACK = ["--gin_file=demo/t5_1_1_demo.gin"]
COMMON = dict(MIXTURE_OR_TASK_NAME=f"'{h.TASK}'", PROMPT_LENGTH=str(h.PROMPT_LENGTH), DROPOUT_RATE="0.0")


def _t5x_train(model_dir):
  h.run_cli("t5x.train", [
      f"--gin_search_paths={h.GIN_DIR}", *STACK, "--gin_file=t5x/prompt.gin", "--gin_file=prompts/from_uniform.gin",
      "--gin_file=t5x/prompt_finetune.gin",
      *h.gin_flags(**COMMON, MODEL_DIR=f"'{model_dir}'", TASK_FEATURE_LENGTHS=h.LENGTHS,
                   INITIAL_CHECKPOINT_PATH=f"'{h.DEMO_CHECKPOINT}'", TRAIN_STEPS=str(h.DEMO_STEP + STEPS),
                   BATCH_SIZE=str(BATCH), SAVE_PERIOD="1", EVAL_PERIOD="1"),
      "--gin.train.infer_eval_dataset_cfg=None", "--gin.train.train_eval_dataset_cfg=None"])


def _our_train(model_dir, prompt_file):
  h.run_cli("prompt_tuning_jax.train", [
      *STACK, "--gin_file=models/prompt.gin", "--gin_file=prompts/from_file.gin", "--gin_file=runs/prompt_finetune.gin",
      *h.gin_flags(**COMMON, MODEL_DIR=f"'{model_dir}'", TASK_FEATURE_LENGTHS=h.LENGTHS,
                   INITIAL_CHECKPOINT_PATH=f"'{h.DEMO_CHECKPOINT}'", PROMPT_FILE=f"'{prompt_file}'",
                   TRAIN_STEPS=str(STEPS), BATCH_SIZE=str(BATCH), SAVE_PERIOD="1"),
      "--gin.runs.train.eval_split=None", "--gin.runs.train.log_period=1"])


def _t5x_numpy_prompt(model_dir, step):
  return model_dir / "numpy_checkpoints" / f"checkpoint_{step}" / h.NUMPY_PROMPT


@pytest.fixture(scope="module")
def t5x_run(tmp_path_factory):
  return h.shared_once(tmp_path_factory, "t5x_train_run", _t5x_train)


@pytest.fixture(scope="module")
def our_run(tmp_path_factory, t5x_run):
  initial = _t5x_numpy_prompt(t5x_run, h.DEMO_STEP)
  return h.shared_once(tmp_path_factory, "our_train_run", lambda d: _our_train(d, initial))


def _t5x_train_losses(model_dir):
  """t5x's per-step `loss_per_nonpadding_target_token` (our trainer's `loss`), from its TensorBoard events."""
  import tensorflow as tf
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(glob.glob(str(model_dir / "train" / "events.out.tfevents.*"))[0],
                                              size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("loss_per_nonpadding_target_token")}


@pytest.mark.slow
def test_t5x_train_exports_the_prompt_at_every_save(t5x_run):
  for step in range(h.DEMO_STEP, h.DEMO_STEP + STEPS + 1):
    prompt = np.load(_t5x_numpy_prompt(t5x_run, step), allow_pickle=False)
    assert prompt.shape == (h.PROMPT_LENGTH, 128) and prompt.dtype == np.float32
  assert not np.array_equal(np.load(_t5x_numpy_prompt(t5x_run, h.DEMO_STEP)),
                            np.load(_t5x_numpy_prompt(t5x_run, h.DEMO_STEP + STEPS)))


@pytest.mark.slow
def test_our_trainer_gives_t5x_loss_at_every_step(t5x_run, our_run):
  ours = {m["step"]: m["loss"] for m in h.read_jsonl(our_run / "metrics.jsonl") if m["split"] == "train"}
  theirs = _t5x_train_losses(t5x_run)
  assert sorted(ours) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([ours[s] for s in range(1, STEPS + 1)],
                             [theirs[h.DEMO_STEP + s] for s in range(1, STEPS + 1)], rtol=1e-5)


@pytest.mark.slow
def test_our_trainer_ends_at_t5x_prompt(t5x_run, our_run):
  for step in range(1, STEPS + 1):
    ours = np.load(our_run / "numpy_checkpoints" / f"checkpoint_{step}" / h.NUMPY_PROMPT)
    theirs = np.load(_t5x_numpy_prompt(t5x_run, h.DEMO_STEP + step))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)  # entries have RMS ~0.5; measured within 1e-5


@pytest.mark.slow
def test_frozen_weights_are_bit_identical_after_a_t5x_run(t5x_run):
  trained = traverse_util.flatten_dict(checkpoints.load_t5x_orbax(str(t5x_run / f"checkpoint_{h.DEMO_STEP + STEPS}")),
                                       sep="/")
  initial, _ = checkpoints.load_params(str(h.DEMO_CHECKPOINT))
  initial = traverse_util.flatten_dict(initial, sep="/")
  assert set(trained) == set(initial) | {"encoder/prompt/prompt/prompt"}
  for name, value in initial.items():
    np.testing.assert_array_equal(trained[name], value, err_msg=name)


@pytest.mark.slow
def test_t5x_eval_of_the_trained_prompt_gives_our_eval_metrics(t5x_run, tmp_path):
  step = h.DEMO_STEP + STEPS
  greedy = tmp_path / "greedy.gin"  # our eval decodes greedily; t5x's default is a 1-beam search
  greedy.write_text("from __gin__ import dynamic_registration\nfrom t5x import decoding\n"
                    "from prompt_tuning_jax.t5x_compat import models as t5x_compat_models\n"
                    "t5x_compat_models.EncoderDecoderModel.decode_fn = @decoding.temperature_sample\n"
                    "decoding.temperature_sample.temperature = 0.0\n")
  h.run_cli("t5x.eval", [
      f"--gin_search_paths={h.GIN_DIR}", *STACK, "--gin_file=t5x/prompt.gin", "--gin_file=prompts/from_uniform.gin",
      "--gin_file=t5x/prompt_eval.gin", f"--gin_file={greedy}",
      *h.gin_flags(**COMMON, CHECKPOINT_PATH=f"'{t5x_run / f'checkpoint_{step}'}'",
                   EVAL_OUTPUT_DIR=f"'{tmp_path / 't5x_eval'}'"),
      f"--gin.seqio.Evaluator.num_examples={EVAL_EXAMPLES}"])
  h.run_cli("prompt_tuning_jax.eval", [
      *STACK, "--gin_file=models/prompt.gin", "--gin_file=prompts/from_file.gin", "--gin_file=runs/prompt_eval.gin",
      *h.gin_flags(**COMMON, MODEL_DIR=f"'{tmp_path / 'our_eval'}'", CHECKPOINT_PATH="None",
                   TASK_FEATURE_LENGTHS=h.LENGTHS, INITIAL_CHECKPOINT_PATH=f"'{h.DEMO_CHECKPOINT}'",
                   PROMPT_FILE=f"'{_t5x_numpy_prompt(t5x_run, step)}'"),
      f"--gin.runs.evaluate.num_examples={EVAL_EXAMPLES}"])
  (theirs,) = h.read_jsonl(tmp_path / "t5x_eval" / "inference_eval" / f"{h.TASK}-metrics.jsonl")
  (ours,) = h.read_jsonl(tmp_path / "our_eval" / "eval_metrics.jsonl")
  for metric in ("sequence_accuracy", "token_accuracy"):
    assert ours[f"{h.TASK}/{metric}"] == pytest.approx(theirs[metric], abs=1e-9)


def _tiny_t5x_model():
  from prompt_tuning_jax import prompts
  from prompt_tuning_jax.data import vocab
  from prompt_tuning_jax.model import Transformer, config_for_size

  module = Transformer(config_for_size("tiny"), prompt_factory=lambda name: prompts.PrefixPrompt(4, name=name))
  vocabulary = vocab.synthetic_vocabulary()
  return module, t5x_compat_models.EncoderDecoderModel(module, vocabulary, vocabulary, optimizer_def=None)


def test_initial_variables_carry_our_logical_axes_for_t5x():
  import flax.linen as nn
  from flax.linen import partitioning as flax_partitioning

  module, model = _tiny_t5x_model()
  shapes = {"encoder_input_tokens": (2, 6), "decoder_input_tokens": (2, 3)}
  variables = model.get_initial_variables(jax.random.PRNGKey(0), shapes)  # no input_types: t5x.eval's call
  tokens, targets = jnp.ones((1, 6), jnp.int32), jnp.ones((1, 3), jnp.int32)
  boxed = module.init(jax.random.PRNGKey(0), tokens, targets, targets, enable_dropout=False)["params"]
  expected = traverse_util.flatten_dict(nn.get_partition_spec(boxed))
  axes = traverse_util.flatten_dict(flax_partitioning.get_axis_names(variables["params_axes"]))
  assert axes == expected
  assert axes[("encoder", "prompt", "prompt", "prompt")] == jax.sharding.PartitionSpec("prompt", "prompt_embed")
  params = traverse_util.flatten_dict(variables["params"])
  assert set(params) == set(expected) and all(isinstance(v, jax.Array) for v in params.values())


def test_gin_built_t5x_model_inits_sampled_vocab_prompts_from_the_checkpoint_embedding():
  import gin

  gin.clear_config()
  try:
    gin.add_config_file_search_path(str(h.GIN_DIR))
    gin.parse_config_files_and_bindings(
        ["demo/t5_1_1_demo.gin", "t5x/prompt.gin", "prompts/from_sampled_vocab.gin"],
        [f"MIXTURE_OR_TASK_NAME = '{h.TASK}'", f"PROMPT_LENGTH = {h.PROMPT_LENGTH}",
         f"t5x_compat_models.EncoderDecoderModel.embedding_checkpoint_path = '{h.DEMO_CHECKPOINT}'"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    shapes = {"encoder_input_tokens": (1, 12), "decoder_input_tokens": (1, 10)}
    params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  finally:
    gin.clear_config()
  prompt = np.asarray(params["encoder"]["prompt"]["prompt"]["prompt"])
  embedding = checkpoints.load_param(str(h.DEMO_CHECKPOINT), "token_embedder/embedding")
  rows = [int(np.flatnonzero((embedding == row).all(axis=1))[0]) for row in prompt]  # IndexError: not a row
  assert len(set(rows)) == h.PROMPT_LENGTH


def test_prompt_filter_selects_what_prompt_regex_trains_in_our_trainer():
  keep = t5x_compat_optimizers.path_filter(".*/prompt/.*")
  assert keep("/encoder/prompt/prompt/prompt", None)
  assert not keep("/encoder/layers_0/attention/query/kernel", None)
  assert not keep("/token_embedder/embedding", None)
