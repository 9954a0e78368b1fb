"""T5 1.1 encoder-decoder with an optional soft prompt spliced into the encoder input.

Follows t5x's encoder-decoder module protocol (`__call__`, `encode`, `decode`, a 'cache' collection for incremental
decoding) with T5X's parameter names, so T5X checkpoints load unrenamed and the module can run under t5x itself.

The prompt is any module made by `prompt_factory(name="prompt")` and called as
`prompt_module(embedded_inputs [b, T, embed], embedding [vocab, embed]) -> [b, P + T, embed]`; see
`prompts/prompt.py`. Without a factory this is plain T5 1.1 (full fine-tuning, pretraining).

A batch may instead bring its own prompt rows (`prompt` [batch, P, embed] with `prompt_mask` [batch, P]): the
prompt bank (`inference/bank.py`) serves examples of many tasks at once this way, each with its task's prompt,
shorter prompts left-padded with masked rows. T5's positions are relative, so a masked row on the left changes
neither the offsets between the real rows and the inputs nor any attention weight.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning_jax.model.config import REMAT_POLICIES, T5Config
from prompt_tuning_jax.model.layers import (
    Dense,
    Embed,
    MlpBlock,
    MultiHeadAttention,
    RelativePositionBiases,
    RMSNorm,
    attention_mask,
    causal_mask,
)

Array = jax.Array


class EncoderLayer(nn.Module):
  """Pre-norm self-attention and gated-GELU MLP, each with dropout and a residual."""

  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array) -> Array:
    """[batch, length, embed] -> [batch, length, embed]; mask [batch, 1, length, length]."""
    c = self.config
    dropout = lambda y: nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(y, deterministic=self.deterministic)
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_attention_layer_norm")(x)
    h = MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, self.deterministic, c.dtype,
                           c.attention_impl, name="attention")(h, h, mask, bias)
    x = x + dropout(h)
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_mlp_layer_norm")(x)
    h = MlpBlock(c.mlp_dim, c.dropout_rate, self.deterministic, c.dtype, name="mlp")(h)
    x = x + dropout(h)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention over the encoder output, and MLP."""

  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, y: Array, encoded: Array, self_mask: Array | None, cross_mask: Array, bias: Array) -> Array:
    """y [batch, target, embed], encoded [batch, source, embed] -> [batch, target, embed]."""
    c = self.config
    dropout = lambda z: nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(z, deterministic=self.deterministic)
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_self_attention_layer_norm")(y)
    h = MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, self.deterministic, c.dtype,
                           c.attention_impl, name="self_attention")(h, h, self_mask, bias, decode=self.decode)
    y = y + dropout(h)
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_cross_attention_layer_norm")(y)
    h = MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, self.deterministic, c.dtype,
                           c.attention_impl, name="encoder_decoder_attention")(h, encoded, cross_mask,
                                                                               cache_kv=self.decode)
    y = y + dropout(h)
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_mlp_layer_norm")(y)
    h = MlpBlock(c.mlp_dim, c.dropout_rate, self.deterministic, c.dtype, name="mlp")(h)
    y = y + dropout(h)
    return nn.with_logical_constraint(y, ("batch", "length", "embed"))


def prompt_valid(prompt_length: int, batch: int, prompt_mask: Array | None) -> Array:
  """[batch, prompt_length] bool: `prompt_mask`, checked, or all True (a single prompt has no padding)."""
  if prompt_mask is None:
    return jnp.ones((batch, prompt_length), bool)
  if prompt_mask.shape != (batch, prompt_length):
    raise ValueError(f"prompt_mask has shape {prompt_mask.shape}, the encoder has {batch} examples with "
                     f"{prompt_length} prompt positions; pass a [batch, prompt_length] mask")
  return prompt_mask.astype(bool)


def _maybe_remat(layer_cls: type[nn.Module], config: T5Config) -> type[nn.Module]:
  # Per-layer rematerialization: what a layer's backward pass needs is recomputed, except what the policy saves.
  if config.remat_policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=REMAT_POLICIES[config.remat_policy])


class Encoder(nn.Module):
  """Embeds tokens, prepends the prompt (if any), and runs the bidirectional stack."""

  config: T5Config
  shared_embedding: nn.Module
  prompt_factory: Callable[..., nn.Module] | None = None

  @nn.compact
  def __call__(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
               enable_dropout: bool = True, prompt: Array | None = None,
               prompt_mask: Array | None = None) -> Array:
    """[batch, length] tokens -> [batch, prompt_length + length, embed].

    `prompt` [batch, P, embed], if given, is prepended instead of the prompt module's output; `prompt_mask`
    [batch, P] bool (default all True) marks its real rows, the others are masked as attention keys.
    """
    c = self.config
    deterministic = not enable_dropout
    x = self.shared_embedding(encoder_input_tokens)  # [b, t, embed]
    valid = encoder_input_tokens > 0
    if (self.prompt_factory is not None or prompt is not None) and encoder_segment_ids is not None:
      raise ValueError("packed inputs (encoder_segment_ids) cannot be combined with a prompt; "
                       "use a feature converter with pack=False")
    if prompt is not None:
      x = jnp.concatenate([prompt.astype(x.dtype), x], axis=1)  # [b, p + t, embed]
    elif self.prompt_factory is not None:
      x = self.prompt_factory(name="prompt")(x, self.shared_embedding.embedding)  # [b, p + t, embed]
    if x.shape[1] > encoder_input_tokens.shape[1]:
      valid = jnp.concatenate([prompt_valid(x.shape[1] - encoder_input_tokens.shape[1], valid.shape[0],
                                            prompt_mask), valid], axis=1)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    mask = attention_mask(valid, valid, encoder_segment_ids, encoder_segment_ids)
    length = x.shape[1]
    bias = RelativePositionBiases(c.relative_attention_num_buckets, c.relative_attention_max_distance,
                                  c.num_heads, c.dtype, name="relpos_bias")(length, length, True)
    layer_cls = _maybe_remat(EncoderLayer, c)
    for i in range(c.num_encoder_layers):
      x = layer_cls(c, deterministic, name=f"layers_{i}")(x, mask, bias)
    x = RMSNorm(c.layer_norm_epsilon, c.dtype, name="encoder_norm")(x)
    return nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Causal stack over the shifted targets, cross-attending to the encoder output; untied logits."""

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array, self_mask: Array | None, cross_mask: Array,
               enable_dropout: bool = True, decode: bool = False, max_decode_length: int | None = None) -> Array:
    """encoded [batch, source, embed], decoder_input_tokens [batch, target] -> logits [batch, target, vocab]."""
    c = self.config
    deterministic = not enable_dropout
    y = self.shared_embedding(decoder_input_tokens)
    y = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    # In decode mode the bias covers the whole cache; attention slices out the current row.
    length = max_decode_length if (decode and max_decode_length) else decoder_input_tokens.shape[1]
    bias = RelativePositionBiases(c.relative_attention_num_buckets, c.relative_attention_max_distance,
                                  c.num_heads, c.dtype, name="relpos_bias")(length, length, False)
    layer_cls = _maybe_remat(DecoderLayer, c)
    for i in range(c.num_decoder_layers):
      y = layer_cls(c, deterministic, decode, name=f"layers_{i}")(y, encoded, self_mask, cross_mask, bias)
    y = RMSNorm(c.layer_norm_epsilon, c.dtype, name="decoder_norm")(y)
    y = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    # T5 1.1: untied output projection, no d_model**-0.5 rescaling.
    logits = Dense(c.vocab_size, ("embed", "vocab"), dtype=c.dtype, name="logits_dense")(y)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return logits.astype(jnp.float32)


class Transformer(nn.Module):
  """T5 1.1 encoder-decoder (t5x protocol); a soft prompt is spliced in when `prompt_factory` is given."""

  config: T5Config
  prompt_factory: Callable[..., nn.Module] | None = None

  def setup(self):
    c = self.config
    self.token_embedder = Embed(c.vocab_size, c.emb_dim, c.dtype)
    self.encoder = Encoder(c, self.token_embedder, self.prompt_factory)
    self.decoder = Decoder(c, self.token_embedder)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
             encoder_positions: Array | None = None, *, enable_dropout: bool = True, prompt: Array | None = None,
             prompt_mask: Array | None = None) -> Array:
    """[batch, length] -> [batch, prompt_length + length, embed].

    `prompt` [batch, P, embed] and `prompt_mask` [batch, P]: per-example prompt rows instead of the prompt
    module's (see `Encoder`). `encoder_positions` is accepted for t5x compatibility; relative attention needs
    only offsets, which are exact within each segment, so it does not change the result.
    """
    del encoder_positions
    return self.encoder(encoder_input_tokens, encoder_segment_ids, enable_dropout, prompt, prompt_mask)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
             decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None, *,
             enable_dropout: bool = True, decode: bool = False, max_decode_length: int | None = None,
             prompt_mask: Array | None = None) -> Array:
    """Decoder logits [batch, target, vocab] (float32) given `encode`'s output [batch, source, embed].

    Masks come from the tokens: padding (id 0) in `encoder_input_tokens` and `decoder_target_tokens` is masked,
    and the prompt positions (source length minus token length, at the front) are visible where `prompt_mask`
    [batch, prompt_length] is True (default: all). With `decode=True` the decoder runs one position per call
    over its 'cache' collection.
    """
    del decoder_positions
    batch, source = encoded.shape[:2]
    prompt_length = source - encoder_input_tokens.shape[1]
    key_valid = jnp.concatenate([prompt_valid(prompt_length, batch, prompt_mask), encoder_input_tokens > 0],
                                axis=1)
    if decode:
      self_mask = None
      query_valid = jnp.ones(decoder_input_tokens.shape, bool)
    else:
      target_valid = decoder_target_tokens > 0
      self_mask = jnp.logical_and(
          attention_mask(target_valid, target_valid, decoder_segment_ids, decoder_segment_ids),
          causal_mask(decoder_target_tokens.shape[1]))
      query_valid = target_valid
    if encoder_segment_ids is not None and decoder_segment_ids is not None:
      cross_mask = attention_mask(query_valid, key_valid, decoder_segment_ids, encoder_segment_ids)
    else:
      cross_mask = attention_mask(query_valid, key_valid)
    return self.decoder(encoded, decoder_input_tokens, self_mask, cross_mask, enable_dropout, decode,
                        max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, decoder_target_tokens: Array,
               encoder_segment_ids: Array | None = None, decoder_segment_ids: Array | None = None,
               encoder_positions: Array | None = None, decoder_positions: Array | None = None, *,
               enable_dropout: bool = True, decode: bool = False, max_decode_length: int | None = None,
               prompt: Array | None = None, prompt_mask: Array | None = None) -> Array:
    """Teacher-forced logits [batch, target, vocab] for inputs [batch, source] and shifted targets [batch, target].

    `prompt` [batch, P, embed] and `prompt_mask` [batch, P]: per-example prompt rows (see `Encoder`).
    """
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          enable_dropout=enable_dropout, prompt=prompt, prompt_mask=prompt_mask)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids, decoder_segment_ids, decoder_positions,
                       enable_dropout=enable_dropout, decode=decode, max_decode_length=max_decode_length,
                       prompt_mask=prompt_mask)
