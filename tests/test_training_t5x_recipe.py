"""Where the paper's recipe depends on t5x's conventions, our trainer follows them (no t5x needed here).

- The optimizer's step continues the initial checkpoint's (t5x restores it), so Adafactor's second-moment decay
  `1 - (step + 1) ** -0.8` starts near 1 for a checkpoint at step 1,100,000.
- The batches trained on are a plain seqio pipeline's for the seed (what t5x feeds), whatever is checked first.
- TRAIN_STEPS may be read as t5x's global step.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import seqio
from flax import traverse_util

from prompt_tuning_jax import checkpoints, prompts
from prompt_tuning_jax.data import tasks  # noqa: F401  (registers the synthetic tasks)
from prompt_tuning_jax.model import Transformer, config_for_size
from prompt_tuning_jax.training import optimizers, runs, trainer

TASK = "synthetic_reverse"
LENGTHS = {"inputs": 12, "targets": 10}
PROMPT_REGEX = ".*/prompt/.*"
CHECKPOINT_STEP = 1000


def test_adafactor_second_moment_decays_with_the_global_step():
  tx = optimizers.adafactor(factored=False)
  params = {"prompt": jnp.ones((2, 3))}
  grads = {"prompt": jnp.arange(1.0, 7.0).reshape(2, 3)}
  for start in (0, CHECKPOINT_STEP):
    state = trainer.start_optimizer_at(tx.init(params), start)
    _, state = tx.update(grads, state, params)
    decay = 1.0 - (start + 1.0) ** -0.8  # t5x's Adafactor at step `start` (0 at step 0: v = g^2)
    v = optax.tree_utils.tree_get(state, "v")["prompt"]  # the unfactored second moment, from 0
    np.testing.assert_allclose(v, (1.0 - decay) * np.square(grads["prompt"]), rtol=1e-5)


def _tiny_model():
  # The synthetic vocabulary has 135 ids.
  return Transformer(config_for_size("tiny", vocab_size=136),
                     prompt_factory=functools.partial(prompts.PrefixPrompt, length=4, init=prompts.uniform()))


def _train(model_dir, initial_checkpoint, **kwargs):
  return runs.train(model=_tiny_model(), model_dir=str(model_dir), mixture_or_task_name=TASK,
                    task_feature_lengths=LENGTHS, train_steps=2, batch_size=8, optimizer=optimizers.adafactor(),
                    trainable_regex=PROMPT_REGEX, initialize_regex=PROMPT_REGEX,
                    initial_checkpoint_path=str(initial_checkpoint), eval_split=None, save_period=1,
                    async_checkpointing=False, **kwargs)


def _frozen_params():
  """The tiny model's parameters without the prompt, as numpy."""
  tokens = jnp.ones((1, 4), jnp.int32)
  boxed = _tiny_model().init(jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False)["params"]
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, nn.meta.unbox(boxed)))
  return traverse_util.unflatten_dict({path: v for path, v in flat.items() if "prompt" not in path})


@pytest.fixture(scope="module")
def t5x_checkpoint(tmp_path_factory):
  """The tiny model without its prompt, as a T5X checkpoint saved at step 1000."""
  return checkpoints.save_t5x_legacy(_frozen_params(), str(tmp_path_factory.mktemp("t5x")), step=CHECKPOINT_STEP)


def _saved_optimizer_counts(model_dir, step):
  tree = ocp.StandardCheckpointer().restore(f"{model_dir}/checkpoint_{step}/state")
  return {int(np.asarray(leaf)) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if getattr(path[-1], "key", None) == "count"}


@pytest.mark.slow
def test_optimizer_step_continues_the_initial_checkpoints_step(t5x_checkpoint, tmp_path):
  assert checkpoints.checkpoint_step(t5x_checkpoint) == CHECKPOINT_STEP
  state = _train(tmp_path / "global", t5x_checkpoint)
  assert int(state.step) == 2  # the run's own step: checkpoint_1, checkpoint_2
  assert _saved_optimizer_counts(tmp_path / "global", 2) == {CHECKPOINT_STEP + 2}
  _train(tmp_path / "from_zero", t5x_checkpoint, optimizer_step_from_checkpoint=False)
  assert _saved_optimizer_counts(tmp_path / "from_zero", 2) == {2}
  # The first update is the same (clipping normalizes it), the second sees the other decay.
  prompt = lambda run, step: np.load(tmp_path / run / "numpy_checkpoints" / f"checkpoint_{step}" /
                                     "encoder.prompt.prompt.prompt")
  np.testing.assert_allclose(prompt("global", 1), prompt("from_zero", 1), atol=1e-5)
  assert np.abs(prompt("global", 2) - prompt("from_zero", 2)).max() > 1e-2


def test_first_training_batch_is_the_plain_seqio_pipelines_for_the_seed(t5x_checkpoint, tmp_path, monkeypatch):
  seen = {}

  def first_batch_only(**kwargs):
    seen["batch"] = next(kwargs["train_batches"](0))
    seen["optimizer_step"] = kwargs["optimizer_step"]
    return None, None

  monkeypatch.setattr(trainer, "train", first_batch_only)
  _train(tmp_path / "run", t5x_checkpoint, seed=3)
  expected = seqio.get_dataset(
      mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, dataset_split="train", shuffle=True, num_epochs=None,
      feature_converter=seqio.EncDecFeatureConverter(pack=False), shard_info=seqio.ShardInfo(0, 1),
      use_cached=False, seed=3, batch_size=8)
  expected = next(expected.as_numpy_iterator())
  assert set(seen["batch"]) == set(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(seen["batch"][name], value, err_msg=name)
  assert seen["optimizer_step"] == CHECKPOINT_STEP


def test_train_steps_in_t5xs_absolute_form_count_from_the_checkpoints_step():
  assert runs.run_train_steps(30000, 1_100_000, absolute_train_steps=False) == 30000
  assert runs.run_train_steps(1_130_000, 1_100_000, absolute_train_steps=True) == 30000
  with pytest.raises(ValueError, match="already at step 1100000"):
    runs.run_train_steps(30000, 1_100_000, absolute_train_steps=True)


def test_hugging_face_and_random_models_start_the_optimizer_at_zero(tmp_path):
  checkpoints.save_hf_t5(_frozen_params(), _tiny_model().config, str(tmp_path))
  assert checkpoints.checkpoint_step(str(tmp_path)) == 0
  assert runs.initial_checkpoint_step(None) == 0
