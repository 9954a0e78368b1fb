"""T5X's cross-entropy loss (with z-loss and label smoothing) and token accuracy.

The loss is a sum over target tokens weighted by `decoder_loss_weights`; the objective divides it by
`loss_normalizing_factor` when one is given (T5X semantics; 'NUM_REAL_TARGET_TOKENS' divides by the number of
weighted tokens). Metrics keep the unnormalized sums so they add up exactly over batches and hosts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array
NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the trainer turns logits into a loss.

  Attributes:
    z_loss: coefficient of log(Z)^2, which keeps the softmax normalizer near 1 (T5X: 1e-4).
    label_smoothing: probability mass spread over the other vocabulary entries (T5X default 0).
    loss_normalizing_factor: None (sum over tokens, T5X's default), a constant, or 'NUM_REAL_TARGET_TOKENS'.
  """

  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: float | str | None = None

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
    if isinstance(self.loss_normalizing_factor, str) and self.loss_normalizing_factor != NUM_REAL_TARGET_TOKENS:
      raise ValueError(f"loss_normalizing_factor {self.loss_normalizing_factor!r} is unknown; use a number, None "
                       f"or {NUM_REAL_TARGET_TOKENS!r}")


def cross_entropy_with_logits(logits: Array, soft_targets: Array, z_loss: float) -> tuple[Array, Array]:
  """Per-token cross-entropy plus z-loss.

  Args:
    logits: [batch, length, vocab] float32.
    soft_targets: [batch, length, vocab] target distribution.
    z_loss: coefficient of log(Z)^2.

  Returns:
    (loss [batch, length] including the z-loss term, z_loss term [batch, length]).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [b, t]
  log_softmax = logits - log_z[..., None]
  loss = -jnp.sum(soft_targets * log_softmax, axis=-1)
  total_z_loss = z_loss * jnp.square(log_z)
  return loss + total_z_loss, total_z_loss


def cross_entropy_with_integer_labels(logits: Array, targets: Array, z_loss: float) -> tuple[Array, Array]:
  """`cross_entropy_with_logits` for one-hot targets, without building the one-hot [batch, length, vocab].

  log Z - logits[target] reads the target logit by a gather, so neither the forward nor the backward pass
  materializes a [batch, length, vocab] array besides the logits and their gradient (XLA fuses the rest into
  the reductions); the result equals the soft-target formula with a one-hot distribution.

  Args:
    logits: [batch, length, vocab] float32.
    targets: [batch, length] int token ids.
    z_loss: coefficient of log(Z)^2.

  Returns:
    (loss [batch, length] including the z-loss term, z_loss term [batch, length]).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [b, t]
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [b, t]
  total_z_loss = z_loss * jnp.square(log_z)
  return log_z - target_logits + total_z_loss, total_z_loss


def compute_weighted_cross_entropy(logits: Array, targets: Array, weights: Array | None,
                                   config: LossConfig) -> tuple[Array, Array, Array]:
  """T5X's `compute_weighted_cross_entropy`, before normalization (see `normalize`).

  Args:
    logits: [batch, length, vocab].
    targets: [batch, length] int token ids.
    weights: [batch, length] loss weights (0 on padding), or None for all ones.
    config: z-loss and label smoothing.

  Returns:
    (loss, z_loss, weight_sum) scalars: weighted sums over tokens (loss includes z_loss) and the sum of weights.
    With label smoothing the loss is shifted by the smoothed distribution's entropy, so a perfect model scores 0.
  """
  weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
  if config.label_smoothing == 0.0:
    loss, z_loss = cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets, config.z_loss)
    return jnp.sum(loss * weights), jnp.sum(z_loss * weights), jnp.sum(weights)
  vocab_size = logits.shape[-1]
  confidence = 1.0 - config.label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(confidence * jnp.log(confidence)
                           + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  soft_targets = jax.nn.one_hot(targets, vocab_size) * (confidence - low_confidence) + low_confidence
  loss, z_loss = cross_entropy_with_logits(logits.astype(jnp.float32), soft_targets, config.z_loss)
  loss = loss - normalizing_constant
  return jnp.sum(loss * weights), jnp.sum(z_loss * weights), jnp.sum(weights)


def normalize(loss: Array, weight_sum: Array, config: LossConfig) -> Array:
  """The objective: the summed loss divided by `config.loss_normalizing_factor` (if any)."""
  factor = config.loss_normalizing_factor
  if factor is None:
    return loss
  if factor == NUM_REAL_TARGET_TOKENS:
    return loss / jnp.maximum(weight_sum, 1.0)
  return loss / factor


def weighted_correct(logits: Array, targets: Array, weights: Array | None) -> Array:
  """Number of weighted target tokens whose argmax prediction is right (a scalar); / weight_sum = accuracy."""
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(correct if weights is None else correct * weights)
