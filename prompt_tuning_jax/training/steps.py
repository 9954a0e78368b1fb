"""The train and eval steps: pure functions of (state, frozen parameters, batch), jitted by the trainer.

The gradient is taken with respect to the trainable parameters only; the frozen ones are closed over, so no
weight gradient of the frozen model is computed and the optimizer never sees it. A step whose loss, gradient or
updated parameters are not finite leaves the state unchanged and reports `finite = 0`, so the host can stop with
the last good state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prompt_tuning_jax.training import losses, train_state

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = dict[str, Array]
# Model features besides the three token arrays (present when the feature converter packs examples).
_OPTIONAL_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions")


def loss_and_metrics(model: nn.Module, params: Any, batch: Batch, loss_config: losses.LossConfig,
                     dropout_rng: Array | None) -> tuple[Array, Metrics]:
  """Teacher-forced loss of `model` on one batch, and summed metrics.

  Args:
    model: a t5x-protocol encoder-decoder (`Transformer`).
    params: its complete parameter tree.
    batch: encoder_input_tokens [b, T], decoder_input_tokens [b, S], decoder_target_tokens [b, S],
      decoder_loss_weights [b, S] (optional; padding gets weight 0 when it is absent).
    loss_config: z-loss, label smoothing, normalization.
    dropout_rng: key for dropout, or None for a deterministic pass.

  Returns:
    (objective to minimize, {loss, z_loss, weight_sum, correct, num_tokens, num_examples}) where every metric is
    an unnormalized sum over the batch, so sums over batches and hosts combine exactly.
  """
  targets = batch["decoder_target_tokens"]
  weights = batch.get("decoder_loss_weights")
  if weights is None:
    weights = (targets > 0).astype(jnp.float32)
  extra = {name: batch[name] for name in _OPTIONAL_FEATURES if name in batch}
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  logits = model.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"], targets,
                       **extra, enable_dropout=dropout_rng is not None, rngs=rngs)  # [b, S, vocab]
  loss, z_loss, weight_sum = losses.compute_weighted_cross_entropy(logits, targets, weights, loss_config)
  metrics = {
      "loss": loss,
      "z_loss": z_loss,
      "weight_sum": weight_sum,
      "correct": losses.weighted_correct(logits, targets, weights),
      "num_tokens": jnp.sum(batch["encoder_input_tokens"] > 0) + jnp.sum(targets > 0),
      # Padding rows added to fill the last eval batch have no weighted target.
      "num_examples": jnp.sum(jnp.any(weights > 0, axis=-1)),
  }
  return losses.normalize(loss, weight_sum, loss_config), metrics


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, loss_config: losses.LossConfig,
                    dropout_seed: int) -> Callable[[train_state.TrainState, Any, Batch],
                                                   tuple[train_state.TrainState, Metrics]]:
  """Returns `train_step(state, frozen, batch) -> (new_state, metrics)`.

  Dropout keys are `fold_in(PRNGKey(dropout_seed), step)`, so a resumed run draws the same masks as an
  uninterrupted one.
  """

  def train_step(state: train_state.TrainState, frozen: Any, batch: Batch):
    dropout_rng = jax.random.fold_in(jax.random.PRNGKey(dropout_seed), state.step)

    def loss_fn(trainable):
      params = train_state.merge_params(trainable, frozen)
      return loss_and_metrics(model, params, batch, loss_config, dropout_rng)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    new_trainable = optax.apply_updates(state.trainable, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(new_trainable))
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = train_state.TrainState(
        step=state.step + 1,
        trainable=keep_if_finite(new_trainable, state.trainable),
        opt_state=keep_if_finite(new_opt_state, state.opt_state))
    metrics["finite"] = finite.astype(jnp.int32)
    metrics["grad_norm"] = grad_norm
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, loss_config: losses.LossConfig) -> Callable[[Any, Any, Batch], Metrics]:
  """Returns `eval_step(trainable, frozen, batch) -> summed metrics` (no dropout)."""

  def eval_step(trainable: Any, frozen: Any, batch: Batch) -> Metrics:
    params = train_state.merge_params(trainable, frozen)
    return loss_and_metrics(model, params, batch, loss_config, dropout_rng=None)[1]

  return eval_step
