"""T5X's weighted cross-entropy with z-loss and label smoothing, and token accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning_jax.training import losses

LOGITS = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
TARGETS = jnp.array([[1, 2, 0], [4, 0, 0]])
WEIGHTS = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_cross_entropy_is_weighted_negative_log_likelihood_plus_z_loss():
  loss, z_loss, weight_sum = losses.compute_weighted_cross_entropy(LOGITS, TARGETS, WEIGHTS,
                                                                   losses.LossConfig(z_loss=1e-4))
  log_z = jax.nn.logsumexp(LOGITS, axis=-1)
  nll = log_z - jnp.take_along_axis(LOGITS, TARGETS[..., None], axis=-1)[..., 0]
  expected_z = 1e-4 * jnp.sum(WEIGHTS * log_z**2)
  np.testing.assert_allclose(loss, jnp.sum(WEIGHTS * nll) + expected_z, rtol=1e-6)
  np.testing.assert_allclose(z_loss, expected_z, rtol=1e-6)
  assert weight_sum == 3.0


def test_label_smoothing_of_a_perfect_prediction_scores_near_zero():
  smoothing, vocab = 0.1, 5
  probs = jnp.full((1, 1, vocab), smoothing / (vocab - 1)).at[0, 0, 2].set(1 - smoothing)
  loss, _, _ = losses.compute_weighted_cross_entropy(jnp.log(probs), jnp.array([[2]]), None,
                                                     losses.LossConfig(z_loss=0.0, label_smoothing=smoothing))
  np.testing.assert_allclose(loss, 0.0, atol=1e-5)


def test_normalize_by_real_target_tokens_gives_the_mean():
  config = losses.LossConfig(loss_normalizing_factor=losses.NUM_REAL_TARGET_TOKENS)
  np.testing.assert_allclose(losses.normalize(jnp.array(6.0), jnp.array(3.0), config), 2.0)
  assert losses.normalize(jnp.array(6.0), jnp.array(3.0), losses.LossConfig()) == 6.0


def test_unknown_normalizing_factor_is_rejected():
  with pytest.raises(ValueError, match="loss_normalizing_factor 'tokens' is unknown"):
    losses.LossConfig(loss_normalizing_factor="tokens")


def test_weighted_correct_counts_only_weighted_argmax_hits():
  logits = jnp.array([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
  correct = losses.weighted_correct(logits, jnp.array([[1, 1, 0]]), jnp.array([[1.0, 1.0, 0.0]]))
  assert correct == 1.0
