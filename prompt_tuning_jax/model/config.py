"""T5 1.1 model configuration.

One frozen dataclass describes the network's shape; gin files under `gin_configs/models/` bind it per size
(tiny .. xxl) and checkpoint loaders infer and check it against the arrays they read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

# REMAT_POLICY names -> what a rematerialized layer keeps from its forward pass (None: no rematerialization).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # save nothing: recompute the whole layer
    "save_dots": jax.checkpoint_policies.dots_saveable,  # keep every matmul output, recompute the rest
    # keep the projections and MLP matmuls, recompute the attention scores (batched dots): t5x's 'minimal'
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ATTENTION_IMPLS = ("einsum", "fused")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and numerics of a T5 1.1 encoder-decoder (T5X / flaxformer names).

  Attributes:
    vocab_size: rows of `token_embedder/embedding` and columns of `decoder/logits_dense/kernel`.
    emb_dim: model width, `embed` axis.
    num_heads: attention heads.
    head_dim: per-head width (`kv` axis); num_heads * head_dim need not equal emb_dim.
    mlp_dim: hidden width of the gated-GELU MLP (`mlp` axis).
    num_encoder_layers: encoder blocks.
    num_decoder_layers: decoder blocks.
    dropout_rate: dropout after embeddings, attention, MLP (T5X applies it in all of these places).
    dtype: activation dtype (float32 for tests, bfloat16 on accelerators). Parameters stay float32.
    relative_attention_num_buckets: buckets of the relative position bias.
    relative_attention_max_distance: distance beyond which all offsets share one bucket.
    layer_norm_epsilon: RMSNorm epsilon.
    remat_policy: per-layer rematerialization, a key of REMAT_POLICIES: 'none', 'full' (recompute each layer
      in the backward pass: least memory), 'save_dots' (keep matmul outputs), 'save_dots_no_batch' (keep the
      projections, recompute attention scores).
    attention_impl: 'einsum' (explicit logits and softmax; always used for decoding and attention dropout) or
      'fused' (`jax.nn.dot_product_attention`: cuDNN's fused kernel on GPUs with bfloat16 activations).
  """

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  remat_policy: str = "none"
  attention_impl: str = "einsum"

  def __post_init__(self):
    # gin files name dtypes as strings ("bfloat16"); normalize so configs compare equal either way.
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {sorted(REMAT_POLICIES)}, got {self.remat_policy!r}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                 "num_decoder_layers", "relative_attention_num_buckets", "relative_attention_max_distance"):
      if getattr(self, name) <= 0:
        raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")

  def replace(self, **changes: Any) -> T5Config:
    return dataclasses.replace(self, **changes)


# Sizes of T5 1.1 (and the LM-adapted checkpoints), as in T5X's gin files.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                 num_encoder_layers=2, num_decoder_layers=2),
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, num_encoder_layers=8, num_decoder_layers=8),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, num_encoder_layers=12,
                 num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816, num_encoder_layers=24,
                  num_decoder_layers=24),
    "xl": dict(emb_dim=2048, num_heads=32, head_dim=64, mlp_dim=5120, num_encoder_layers=24, num_decoder_layers=24),
    "xxl": dict(emb_dim=4096, num_heads=64, head_dim=64, mlp_dim=10240, num_encoder_layers=24,
                num_decoder_layers=24),
}


def config_for_size(size: str, **overrides: Any) -> T5Config:
  """Returns the T5 1.1 config of a named size, e.g. `config_for_size("base", dtype=jnp.bfloat16)`."""
  if size not in SIZES:
    raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
  return T5Config(**{**SIZES[size], **overrides})
