"""T5 1.1 building blocks in Flax linen, with T5X parameter names and logical axis names.

Every parameter is created through `nn.with_logical_partitioning`, so `nn.get_partition_spec` on the initialized
variables gives its logical axes and sharding is a table of rules (see `training/partitioning.py`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
DType = Any

# Added to attention logits at masked positions (T5X uses the same magnitude).
_MASK_BIAS = -1e10


def _param(module: nn.Module, name: str, init, shape: tuple[int, ...], axes: tuple[str, ...]) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no bias, no mean subtraction; computed in float32."""

  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., embed] -> [..., embed] in `dtype`."""
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    x32 = x.astype(jnp.float32)
    x32 = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return x32.astype(self.dtype) * scale.astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table `embedding` [vocab, embed]; shared by encoder and decoder inputs."""

  num_embeddings: int
  features: int
  dtype: DType = jnp.float32

  def setup(self):
    # Defined in setup so the prompt initializers can read the table (`.embedding`).
    self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                            (self.num_embeddings, self.features), ("vocab", "embed"))

  def __call__(self, tokens: Array) -> Array:
    """[batch, length] int -> [batch, length, embed]."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)


class Dense(nn.Module):
  """A bias-free projection with a 2-D kernel [in, out], stored as T5X stores it."""

  features: int
  kernel_axes: tuple[str, str]
  kernel_init: Any = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.kernel_axes)
    return jnp.einsum("...i,io->...o", x, kernel.astype(self.dtype))


class MlpBlock(nn.Module):
  """T5 1.1 gated-GELU feed-forward: wo(gelu_tanh(wi_0 x) * wi_1 x)."""

  mlp_dim: int
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[batch, length, embed] -> [batch, length, embed]."""
    gate = Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="wi_0")(x)
    linear = Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="wi_1")(x)
    h = nn.gelu(gate, approximate=True) * linear
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=self.deterministic)
    return Dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="wo")(h)


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """Maps key-minus-query offsets to T5's buckets: exact for small offsets, log-spaced up to max_distance.

  Args:
    relative_position: [q, k] int, memory position minus query position.
    bidirectional: encoder (True) or causal decoder (False).
    num_buckets: total buckets (half per direction when bidirectional).
    max_distance: offsets at or beyond this share the last bucket.

  Returns:
    [q, k] int32 bucket ids in [0, num_buckets).
  """
  ret = jnp.zeros_like(relative_position)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # n is >= max_exact where used; the max() only keeps log() finite on the other branch.
  val_if_large = max_exact + (
      jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return (ret + jnp.where(is_small, n, val_if_large)).astype(jnp.int32)


class RelativePositionBiases(nn.Module):
  """Learned per-head scalar bias for each relative-position bucket, `rel_embedding` [heads, buckets]."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool) -> Array:
    """Returns the bias [1, heads, qlen, klen] added to attention logits."""
    table = _param(self, "rel_embedding", nn.initializers.normal(stddev=1.0),
                   (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    relative = jnp.arange(klen)[None, :] - jnp.arange(qlen)[:, None]  # [q, k]
    buckets = relative_position_bucket(relative, bidirectional, self.num_buckets, self.max_distance)
    bias = jnp.take(table, buckets, axis=1)  # [heads, q, k]
    return bias[None].astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """T5 attention: no 1/sqrt(head_dim) logit scaling (it is folded into the query init), optional KV cache.

  With `decode=True` the module keeps `cached_key`, `cached_value` [batch, max_length, heads, kv] and `cache_index`
  in the 'cache' collection (t5x's protocol): the first call (all positions) only sizes the cache, each later call
  processes one new position. With `cache_kv=True` (cross-attention while decoding) the projected keys and values
  of the fixed `inputs_kv` are computed once, on the first call, and read from the cache afterwards.

  `attention_impl='fused'` computes softmax(q k^T + bias, masked) v with `jax.nn.dot_product_attention` (cuDNN's
  fused kernel on a GPU with bfloat16/float16 activations, XLA's composition elsewhere) whenever no attention
  dropout is active and no KV cache is used; otherwise, and with 'einsum', the explicit einsums below run.
  """

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: DType = jnp.float32
  attention_impl: str = "einsum"

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None = None, bias: Array | None = None,
               decode: bool = False, cache_kv: bool = False) -> Array:
    """Attends `inputs_q` [batch, q, embed] over `inputs_kv` [batch, k, embed].

    Args:
      mask: [batch, 1|heads, q, k] bool, True where attention is allowed.
      bias: [1|batch, heads, q, k] added to the logits (relative positions); in decode mode the full
        [1, heads, max_length, max_length] table, sliced here at the current position.
      decode: self-attention with the KV cache (one query position per call after the first).
      cache_kv: keep the projections of `inputs_kv` in the cache (they do not change between decoding steps).

    Returns:
      [batch, q, embed].
    """
    joined = self.num_heads * self.head_dim
    embed = inputs_q.shape[-1]
    # T5X folds 1/sqrt(head_dim) into the query kernel's init instead of scaling the logits.
    query_init = nn.initializers.variance_scaling(1.0 / self.head_dim, "fan_in", "truncated_normal")
    query = Dense(joined, ("embed", "joined_kv"), kernel_init=query_init, dtype=self.dtype, name="query")(inputs_q)
    split = lambda x: x.reshape(*x.shape[:2], self.num_heads, self.head_dim)
    if cache_kv and self.has_variable("cache", "projected_key"):
      key, value = self.get_variable("cache", "projected_key"), self.get_variable("cache", "projected_value")
    else:
      key = split(Dense(joined, ("embed", "joined_kv"), dtype=self.dtype, name="key")(inputs_kv))
      value = split(Dense(joined, ("embed", "joined_kv"), dtype=self.dtype, name="value")(inputs_kv))
      if cache_kv:
        self.put_variable("cache", "projected_key", key)
        self.put_variable("cache", "projected_value", value)
    query = split(query)  # [batch, len, heads, kv]
    query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
    key = nn.with_logical_constraint(key, ("batch", "length", "heads", "kv"))
    value = nn.with_logical_constraint(value, ("batch", "length", "heads", "kv"))

    if decode:
      is_initialized = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
      if is_initialized:
        batch, max_length = cached_key.value.shape[:2]
        if query.shape[1] != 1:
          raise ValueError(f"decode=True processes one position per call, got {query.shape[1]}")
        index = cache_index.value
        key = lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
        value = lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
        cached_key.value, cached_value.value = key, value
        cache_index.value = index + 1
        # Causality from the cache: only positions written so far are visible.
        step_mask = (jnp.arange(max_length) <= index)[None, None, None, :]
        mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)
        if bias is not None:
          bias = lax.dynamic_slice(bias, (0, 0, index, 0), (1, bias.shape[1], 1, max_length))

    no_dropout = self.deterministic or self.dropout_rate == 0.0
    if self.attention_impl == "fused" and no_dropout and not decode and not cache_kv:
      out = fused_attention(query, key, value, bias, mask)
    else:
      logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
      if bias is not None:
        logits = logits + bias.astype(jnp.float32)
      if mask is not None:
        logits = jnp.where(mask, logits, _MASK_BIAS)
      weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=self.deterministic)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    out = out.reshape(*out.shape[:2], joined)
    return Dense(embed, ("joined_kv", "embed"), dtype=self.dtype, name="out")(out)


def fused_attention(query: Array, key: Array, value: Array, bias: Array | None, mask: Array | None) -> Array:
  """T5 attention by `jax.nn.dot_product_attention`: no 1/sqrt(kv) scaling (scale=1), bias and mask as given.

  Args:
    query: [batch, q, heads, kv]; key, value: [batch, k, heads, kv], all of one dtype.
    bias: [1|batch, heads, q, k] (relative positions) or None.
    mask: [batch, 1|heads, q, k] bool, True where attention is allowed, or None.

  Returns:
    [batch, q, heads, kv] in the inputs' dtype. cuDNN's kernel runs on a GPU for bfloat16/float16 inputs,
    XLA's composition (float32 logits and softmax, as the einsum path) everywhere else.
  """
  on_gpu = jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16)
  if bias is not None:
    bias = bias.astype(query.dtype if on_gpu else jnp.float32)
  return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=1.0,
                                      implementation="cudnn" if on_gpu else "xla")


def attention_mask(query_valid: Array, key_valid: Array, query_segments: Array | None = None,
                   key_segments: Array | None = None) -> Array:
  """[batch, q] and [batch, k] validity (and optional segment ids) -> [batch, 1, q, k] bool mask."""
  mask = jnp.logical_and(query_valid[:, :, None], key_valid[:, None, :])
  if query_segments is not None:
    mask = jnp.logical_and(mask, query_segments[:, :, None] == key_segments[:, None, :])
  return mask[:, None]


def causal_mask(length: int) -> Array:
  """[1, 1, length, length] bool, True on and below the diagonal."""
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
