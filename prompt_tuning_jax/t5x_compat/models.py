"""t5x's `EncoderDecoderModel` around this package's `Transformer`.

t5x reads two things from the initial variables that our module expresses differently:
- logical axes: t5x's train state and partitioner read a `params_axes` collection (flax
  `linen.partitioning`'s `<name>_axes` variables of `AxisMetadata`) beside unboxed parameters, while our layers
  create `nn.with_logical_partitioning` boxes. `get_initial_variables` unboxes the parameters and derives the
  `params_axes` collection from the boxes' names, so t5x shards with the same logical axes as our trainer.
- token dtypes: t5x's eval and (without `input_types`) other entry points initialize with float32 dummy tokens;
  token features default to int32 here, as flaxformer's embedder casts them.
- the decoding cache: t5x sizes it with a call on dummy tokens (all ones), but our cross-attention keeps the
  projection of the encoder output it sees on that first call (it does not change between decoding steps), so
  `_compute_kv_cache` sizes the cache on the real encoder output instead, as `inference.decoding` does.
The module, its parameter names and its numerics are untouched: a t5x checkpoint holds the tree our trainer
and checkpoint readers use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import core as flax_core
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning
from t5x import models as t5x_models

PyTree = Any


def params_axes(boxed_params: PyTree) -> dict[str, Any]:
  """The `params_axes` collection t5x reads, from a boxed parameter tree (`nn.with_logical_partitioning`).

  Args:
    boxed_params: the 'params' collection of `module.init`, leaves `nn.LogicallyPartitioned` boxes.

  Returns:
    A nested dict mirroring the parameters, each leaf `name` replaced by `name_axes` holding
    `flax.linen.partitioning.AxisMetadata(names=(logical axis per dimension, ...))`.
  """
  specs = traverse_util.flatten_dict(flax_core.unfreeze(nn.get_partition_spec(boxed_params)))
  axes = {}
  for path, spec in specs.items():
    if spec is None or len(spec) == 0:
      raise ValueError(f"parameter {'/'.join(path)} has no logical axis names; create it through "
                       "nn.with_logical_partitioning (model/layers.py's _param) so t5x can partition it")
    axes[(*path[:-1], f"{path[-1]}_axes")] = flax_partitioning.AxisMetadata(names=tuple(spec))
  return traverse_util.unflatten_dict(axes)


class EncoderDecoderModel(t5x_models.EncoderDecoderModel):
  """`t5x.models.EncoderDecoderModel` for `prompt_tuning_jax.model.t5.Transformer` (same constructor)."""

  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Any],
                            input_types: Mapping[str, jnp.dtype] | None = None) -> flax_core.FrozenDict:
    """t5x's initial variables: unboxed 'params' plus their 'params_axes' (see the module docstring)."""
    types = {name: jnp.int32 for name in input_shapes}  # every feature of EncDecFeatureConverter is integer
    types.update(input_types or {})
    variables = flax_core.unfreeze(super().get_initial_variables(rng, input_shapes, types))
    boxed = variables.pop("params")
    variables = nn.meta.unbox(variables)
    return flax_core.freeze({"params": nn.meta.unbox(boxed), "params_axes": params_axes(boxed), **variables})

  def _compute_kv_cache(self, params: PyTree, encoded_inputs: jax.Array, encoder_input_tokens: jax.Array,
                        decoder_input_tokens: jax.Array, prefill_decoder_prompt: bool = False) -> tuple[PyTree, None]:
    """The decoding cache for `encoded_inputs` [batch, source, embed], sized for `decoder_input_tokens` [batch, T].

    Returns:
      (cache, None): no decoder-prompt prefill, so decoding starts at position 0.
    """
    if prefill_decoder_prompt:
      raise ValueError("this model does not prefill decoder prompts; decode without prompt_with_targets")
    dummy = jnp.ones_like(decoder_input_tokens)
    _, variables = self.module.apply({"params": params}, encoded_inputs, encoder_input_tokens, dummy, dummy,
                                     enable_dropout=False, decode=True,
                                     max_decode_length=decoder_input_tokens.shape[1], mutable=["cache"],
                                     method=self.module.decode)
    return variables["cache"], None
