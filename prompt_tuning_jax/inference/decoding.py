"""Autoregressive decoding with the model's KV cache (t5x's `decode=True` protocol)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "eos_id"))
def greedy_decode(model: nn.Module, params: Any, encoder_input_tokens: Array, max_decode_length: int,
                  eos_id: int = 1) -> Array:
  """Greedy decoding: the most likely token at every step, until EOS or `max_decode_length`.

  Args:
    model: a `Transformer` (its prompt, if any, is part of `params`).
    params: unboxed parameters.
    encoder_input_tokens: [batch, length] int32, 0-padded.
    max_decode_length: number of decoder positions.
    eos_id: end-of-sequence id; positions after it are 0 (padding).

  Returns:
    [batch, max_decode_length] int32 token ids, EOS included, 0 after it.
  """
  batch = encoder_input_tokens.shape[0]
  variables = {"params": params}
  encoded = model.apply(variables, encoder_input_tokens, enable_dropout=False, method=model.encode)
  # A first call over all positions only sizes the cache (t5x's protocol).
  dummy = jnp.zeros((batch, max_decode_length), jnp.int32)
  _, init_vars = model.apply(variables, encoded, encoder_input_tokens, dummy, dummy, enable_dropout=False,
                             decode=True, max_decode_length=max_decode_length, mutable=["cache"],
                             method=model.decode)

  def step(carry, _):
    cache, previous, done = carry  # previous: [batch, 1]
    logits, new_vars = model.apply({**variables, "cache": cache}, encoded, encoder_input_tokens, previous,
                                   jnp.ones_like(previous), enable_dropout=False, decode=True,
                                   max_decode_length=max_decode_length, mutable=["cache"], method=model.decode)
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)  # [batch]
    token = jnp.where(done, 0, token)
    done = jnp.logical_or(done, token == eos_id)
    return (new_vars["cache"], token[:, None], done), token

  start = jnp.zeros((batch, 1), jnp.int32)  # T5 starts decoding from id 0
  carry = (init_vars["cache"], start, jnp.zeros((batch,), bool))
  _, tokens = jax.lax.scan(step, carry, None, length=max_decode_length)
  return tokens.T  # [batch, max_decode_length]
