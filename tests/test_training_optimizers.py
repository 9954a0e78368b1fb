"""The optimizers and the regex mask: only trainable parameters get updates and optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning_jax.training import optimizers

PARAMS = {"encoder": {"prompt": {"prompt": {"prompt": jnp.ones((4, 8))}},
                      "layers_0": {"mlp": {"wi_0": {"kernel": jnp.ones((8, 16))}}}}}
PROMPT_REGEX = ".*/prompt/.*"


def test_regex_labels_mark_prompt_trainable_and_rest_frozen():
  labels = optimizers.regex_labels(PARAMS, PROMPT_REGEX)
  assert labels["encoder"]["prompt"]["prompt"]["prompt"] == "trainable"
  assert labels["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"] == "frozen"


def test_trainable_only_holds_state_for_trainable_leaves_only():
  tx = optimizers.trainable_only(optax.adam(0.1), PROMPT_REGEX)
  state = tx.init(PARAMS)
  shapes = [leaf.shape for leaf in jax.tree.leaves(state) if getattr(leaf, "ndim", 0) > 0]
  assert shapes == [(4, 8), (4, 8)]  # Adam's mu and nu of the prompt; nothing for the MLP kernel


def test_trainable_only_gives_frozen_leaves_zero_updates():
  tx = optimizers.trainable_only(optax.sgd(0.1), PROMPT_REGEX)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  assert not np.any(updates["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"])
  assert np.all(updates["encoder"]["prompt"]["prompt"]["prompt"] == -0.1)


def test_prompt_adafactor_keeps_the_full_second_moment():
  prompt = {"prompt": jnp.ones((200, 256))}  # large enough that factoring would apply by size
  state = optimizers.adafactor(factored=False).init(prompt)
  assert state[0].v["prompt"].shape == (200, 256)
  factored_state = optimizers.adafactor(factored=True).init(prompt)
  assert factored_state[0].v_row["prompt"].shape == (200,)


def test_adafactor_applies_weight_decay_without_gradient():
  params = {"p": jnp.full((2, 2), 2.0)}
  tx = optimizers.adafactor(learning_rate=0.0, weight_decay_rate=1e-5)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["p"], -2e-5, rtol=1e-6)


def test_rsqrt_schedule_is_flat_during_warmup_then_decays():
  schedule = optimizers.learning_rate_schedule(1.0, "rsqrt", warmup_steps=100)
  np.testing.assert_allclose([schedule(10), schedule(100), schedule(400)], [0.1, 0.1, 0.05], rtol=1e-6)


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match="unknown learning-rate decay 'cosine'"):
    optimizers.learning_rate_schedule(1.0, "cosine")
