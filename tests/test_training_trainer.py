"""The training loop on the tiny model: learning, what changes, resumption, meshes, non-finite losses."""

import json
import os

import _training_helpers as helpers
import jax
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning_jax.training import optimizers, trainer
from prompt_tuning_jax.training.checkpointing import Checkpoints

STEPS = 40


def _metrics(model_dir, split="train"):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [line for line in map(json.loads, f) if line["split"] == split]


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory):
  """One prompt-tuning run of 40 steps, saved every 20."""
  model_dir = str(tmp_path_factory.mktemp("prompt_run"))
  state, frozen, initial = helpers.train_tiny(model_dir, steps=STEPS, save_period=20)
  return model_dir, state, frozen, initial


def test_prompt_tuning_lowers_the_loss_substantially(prompt_run):
  losses = [m["loss"] for m in _metrics(prompt_run[0])]
  assert len(losses) == STEPS
  assert np.mean(losses[-5:]) < 0.5 * losses[0]


def test_only_the_prompt_is_trainable(prompt_run):
  _, state, _, _ = prompt_run
  paths = ["/".join(p) for p in traverse_util.flatten_dict(state.trainable)]
  assert paths == ["encoder/prompt/prompt/prompt"]


def test_prompt_changes_during_training(prompt_run):
  _, state, _, initial = prompt_run
  assert not np.allclose(helpers.prompt_of(state.trainable), helpers.prompt_of(initial))


def test_frozen_params_are_bit_identical_after_training(prompt_run):
  _, _, frozen, initial = prompt_run
  flat_initial = traverse_util.flatten_dict(initial)
  flat_frozen = traverse_util.flatten_dict(frozen)
  assert len(flat_frozen) == len(flat_initial) - 1
  for path, value in flat_frozen.items():
    np.testing.assert_array_equal(np.asarray(value), flat_initial[path], err_msg="/".join(path))


def test_frozen_params_have_no_optimizer_state(prompt_run):
  _, state, _, initial = prompt_run
  prompt_shape = helpers.prompt_of(initial).shape
  # Adafactor's unfactored second moment of the prompt, and (1,) placeholders for its unused factored slots.
  slot_shapes = {leaf.shape for leaf in jax.tree.leaves(state.opt_state) if leaf.size > 1}
  assert slot_shapes == {prompt_shape}


def test_saved_steps_export_the_prompt_in_the_reference_layout(prompt_run):
  model_dir, state, _, _ = prompt_run
  exported = np.load(os.path.join(model_dir, "numpy_checkpoints", "checkpoint_40", "encoder.prompt.prompt.prompt"))
  np.testing.assert_array_equal(exported, helpers.prompt_of(state.trainable))
  assert sorted(os.listdir(os.path.join(model_dir, "numpy_checkpoints"))) == ["checkpoint_20", "checkpoint_40"]


def test_checkpoints_hold_the_trainable_params_not_the_frozen_model(prompt_run):
  from prompt_tuning_jax.checkpoints import load_params

  model_dir, state, _, _ = prompt_run
  saved, _ = load_params(os.path.join(model_dir, "checkpoint_40"))
  assert ["/".join(p) for p in traverse_util.flatten_dict(saved)] == ["encoder/prompt/prompt/prompt"]
  np.testing.assert_array_equal(helpers.prompt_of(saved), helpers.prompt_of(state.trainable))


@pytest.mark.slow
def test_resumed_run_ends_bit_identical_to_uninterrupted_run(tmp_path):
  model = helpers.tiny_model(dropout_rate=0.1)  # dropout keys must also follow the step
  uninterrupted, _, _ = helpers.train_tiny(str(tmp_path / "a"), model=model, steps=6, save_period=3)
  helpers.train_tiny(str(tmp_path / "b"), model=model, steps=3, save_period=3)  # "stopped" at step 3
  resumed, _, _ = helpers.train_tiny(str(tmp_path / "b"), model=model, steps=6, save_period=3)
  assert int(resumed.step) == 6
  np.testing.assert_array_equal(helpers.prompt_of(resumed.trainable), helpers.prompt_of(uninterrupted.trainable))
  for a, b in zip(jax.tree.leaves(resumed.opt_state), jax.tree.leaves(uninterrupted.opt_state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [m["step"] for m in _metrics(str(tmp_path / "b"))] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_full_finetuning_changes_every_parameter(tmp_path):
  model = helpers.tiny_model(prompt_length=None)
  state, frozen, initial = helpers.train_tiny(
      str(tmp_path), model=model, steps=2, trainable_regex=".*",
      optimizer=optimizers.adafactor(learning_rate=1e-3, factored=True, multiply_by_parameter_scale=True))
  assert frozen == {}
  flat_initial = traverse_util.flatten_dict(initial)
  for path, value in traverse_util.flatten_dict(state.trainable).items():
    assert not np.array_equal(np.asarray(value), flat_initial[path]), "/".join(path)
  assert len(traverse_util.flatten_dict(state.trainable)) == len(flat_initial)


@pytest.mark.slow
def test_meshes_give_the_same_loss_and_updated_prompt(tmp_path):
  results = {}
  for shape in [(1, 1), (8, 1), (2, 4)]:
    model_dir = str(tmp_path / f"mesh_{shape[0]}x{shape[1]}")
    state, _, _ = helpers.train_tiny(model_dir, steps=3, mesh_shape=shape)
    results[shape] = ([m["loss"] for m in _metrics(model_dir)], helpers.prompt_of(state.trainable))
  reference_losses, reference_prompt = results[(1, 1)]
  for shape, (losses, prompt) in results.items():
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5, err_msg=str(shape))
    np.testing.assert_allclose(prompt, reference_prompt, rtol=1e-4, atol=1e-5, err_msg=str(shape))


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
  model_dir = str(tmp_path)
  helpers.train_tiny(model_dir, steps=2, save_period=2)
  good = helpers.prompt_of(Checkpoints(model_dir)._manager.restore(2)["state"]["target"])
  message = r"diverged at step 3 .*checkpoint_2 is the last good checkpoint"
  with pytest.raises(trainer.NonFiniteLossError, match=message):
    helpers.train_tiny(model_dir, steps=6, save_period=1, optimizer=optimizers.adafactor(learning_rate=np.inf))
  checkpoints = Checkpoints(model_dir)
  assert checkpoints.all_steps() == [2]
  np.testing.assert_array_equal(helpers.prompt_of(checkpoints._manager.restore(2)["state"]["target"]), good)


def test_resuming_with_another_batch_size_is_refused(prompt_run):
  model_dir = prompt_run[0]
  with pytest.raises(ValueError, match="checkpoint_40 was trained with batch_size=8, this run has 16"):
    helpers.train_tiny(model_dir, steps=50, batch_size=16)
  assert Checkpoints(model_dir).all_steps() == [20, 40]
