"""Optimizers and the trainable/frozen mask over parameter paths.

Prompt tuning (Lester et al. 2021) trains with Adafactor: constant learning rate 0.3, decay rate 0.8, weight decay
1e-5, no parameter-scale multiplication, and the prompt's second moment kept whole (not factored). AdamW is the
alternative. `trainable_only` wraps either so parameters outside the trainable regex get no update and no state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from prompt_tuning_jax.training import train_state

TRAINABLE, FROZEN = "trainable", "frozen"
Schedule = Callable[[Any], Any]


def learning_rate_schedule(base_learning_rate: float, decay: str = "constant", warmup_steps: int = 0) -> Schedule:
  """T5X's schedules: 'constant' (prompt tuning, fine-tuning) or 'rsqrt' = base / sqrt(max(step, warmup))."""
  if decay == "constant":
    return optax.constant_schedule(base_learning_rate)
  if decay == "rsqrt":
    if warmup_steps <= 0:
      raise ValueError(f"rsqrt decay needs warmup_steps > 0, got {warmup_steps}; T5 pretraining uses 10000")
    return lambda step: base_learning_rate * jnp.reciprocal(jnp.sqrt(jnp.maximum(step, warmup_steps)))
  raise ValueError(f"unknown learning-rate decay {decay!r}; use 'constant' or 'rsqrt'")


def adafactor(learning_rate: float | Schedule = 0.3, decay_rate: float = 0.8, weight_decay_rate: float | None = 1e-5,
              multiply_by_parameter_scale: bool = False, factored: bool = False, clipping_threshold: float = 1.0,
              min_dim_size_to_factor: int = 128) -> optax.GradientTransformation:
  """Adafactor with the prompt-tuning paper's defaults.

  `factored=False` keeps the full second moment (the prompt is small, [prompt_length, embed]); full fine-tuning
  and pretraining use `factored=True, multiply_by_parameter_scale=True` as T5X does.
  """
  return optax.adafactor(learning_rate=learning_rate, decay_rate=decay_rate, weight_decay_rate=weight_decay_rate,
                         multiply_by_parameter_scale=multiply_by_parameter_scale, factored=factored,
                         clipping_threshold=clipping_threshold, min_dim_size_to_factor=min_dim_size_to_factor)


def adamw(learning_rate: float | Schedule = 0.3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-5) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay), the usual alternative to Adafactor."""
  return optax.adamw(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def regex_labels(params: Any, trainable_regex: str) -> Any:
  """Tree like `params` with 'trainable' where the '/'-joined path fully matches the regex, else 'frozen'."""
  return jax.tree.map(lambda trainable: TRAINABLE if trainable else FROZEN,
                      train_state.trainable_mask(params, trainable_regex))


def trainable_only(tx: optax.GradientTransformation, trainable_regex: str) -> optax.GradientTransformation:
  """`tx` on parameters whose path matches `trainable_regex`; zero updates and no optimizer state elsewhere.

  The trainer already hands the optimizer only the trainable subtree; the mask keeps that guarantee if a full
  parameter tree is ever passed, since `multi_transform` holds `tx`'s state for 'trainable' leaves only.
  """
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                               lambda params: regex_labels(params, trainable_regex))
