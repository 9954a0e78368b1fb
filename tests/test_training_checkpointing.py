"""Train-state checkpoints: T5X orbax layout, prompt exports, retention, resumption checks."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning_jax.checkpoints import load_params, load_prompt
from prompt_tuning_jax.training import optimizers
from prompt_tuning_jax.training.checkpointing import Checkpoints
from prompt_tuning_jax.training.train_state import TrainState


def _state(step: int, prompt_length: int = 4, value: float = 1.0) -> TrainState:
  trainable = {"encoder": {"prompt": {"prompt": {"prompt": jnp.full((prompt_length, 8), value)}}}}
  tx = optimizers.adafactor()
  return TrainState(step=jnp.asarray(step, jnp.int32), trainable=trainable, opt_state=tx.init(trainable))


def _abstract(state: TrainState) -> TrainState:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_checkpoint_uses_t5x_orbax_layout_readable_as_initial_checkpoint(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), async_save=False)
  checkpoints.save(_state(5), {"step": 5})
  assert {"state", "input_position"} <= set(os.listdir(tmp_path / "checkpoint_5"))
  params, _ = load_params(str(tmp_path / "checkpoint_5"))
  np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"]["prompt"], np.ones((4, 8)))


def test_restore_returns_the_saved_state_and_input_position(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), async_save=False)
  saved = _state(7, value=0.5)
  checkpoints.save(saved, {"step": 7, "batch_size": 32})
  restored, position = Checkpoints(str(tmp_path)).restore(7, _abstract(saved))
  assert int(restored.step) == 7 and position == {"step": 7, "batch_size": 32}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_every_save_exports_the_prompt_in_the_reference_layout(tmp_path):
  Checkpoints(str(tmp_path), async_save=False).save(_state(3, value=2.0), {"step": 3})
  exported = tmp_path / "numpy_checkpoints" / "checkpoint_3" / "encoder.prompt.prompt.prompt"
  np.testing.assert_array_equal(np.load(exported), np.full((4, 8), 2.0, np.float32))


def test_peft_export_writes_a_loadable_adapter(tmp_path):
  peft = {"num_layers": 2, "num_attention_heads": 4}
  Checkpoints(str(tmp_path), export_peft=peft, async_save=False).save(_state(3, value=2.0), {"step": 3})
  prompt = load_prompt(str(tmp_path / "peft_adapters" / "checkpoint_3"), length=4, embed_dim=8)
  np.testing.assert_array_equal(prompt, np.full((4, 8), 2.0, np.float32))


def test_keeps_the_latest_checkpoints_and_the_best_by_metric(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=2, best_metric="validation/loss", best_mode="min", async_save=False)
  for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, None), (5, None)]:
    checkpoints.save(_state(step), {"step": step}, None if loss is None else {"validation/loss": loss})
  assert checkpoints.all_steps() == [2, 4, 5]
  assert checkpoints.best_step() == 2


def test_saving_an_existing_step_leaves_it_untouched(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), async_save=False)
  checkpoints.save(_state(2, value=1.0), {"step": 2})
  checkpoints.save(_state(2, value=9.0), {"step": 2})
  params, _ = load_params(str(tmp_path / "checkpoint_2"))
  assert float(params["encoder"]["prompt"]["prompt"]["prompt"][0, 0]) == 1.0


def test_restore_rejects_a_checkpoint_of_another_prompt_length(tmp_path):
  Checkpoints(str(tmp_path), async_save=False).save(_state(2, prompt_length=4), {"step": 2})
  with pytest.raises(ValueError, match=r"holds encoder/prompt/prompt/prompt of shape \(4, 8\), .* expects \(6, 8\)"):
    Checkpoints(str(tmp_path)).restore(2, _abstract(_state(0, prompt_length=6)))
