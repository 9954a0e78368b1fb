"""t5x's `EncoderDecoderModel` around this package's `Transformer`.

Where t5x expects something our module expresses differently, this subclass adapts (the module is unchanged):
- logical axes: t5x's train state and partitioner read a `params_axes` collection (flax
  `linen.partitioning`'s `<name>_axes` variables of `AxisMetadata`) beside unboxed parameters, while our layers
  create `nn.with_logical_partitioning` boxes. `get_initial_variables` unboxes the parameters and derives the
  `params_axes` collection from the boxes' names, so t5x shards with the same logical axes as our trainer.
- token dtypes: t5x's eval and (without `input_types`) other entry points initialize with float32 dummy tokens;
  token features default to int32 here, as flaxformer's embedder casts them.
- the prompt initializer's view of the embedding: t5x initializes every parameter from scratch and only then
  restores the checkpoint's, so sampled-vocabulary, class-label and text inits would read a random token table.
  Given `embedding_checkpoint_path` (t5x/prompt_finetune.gin binds INITIAL_CHECKPOINT_PATH), the prompt is
  initialized with that checkpoint's `token_embedder/embedding` in view, read once on the host, as our trainer
  does after its partial restore (`prompts.init_missing_params`).
- the decoding cache: t5x sizes it with a call on dummy tokens (all ones), but our cross-attention keeps the
  projection of the encoder output it sees on that first call (it does not change between decoding steps), so
  `_compute_kv_cache` sizes the cache on the real encoder output instead, as `inference.decoding` does.
Parameter names and numerics are our own: a t5x checkpoint holds the tree our trainer
and checkpoint readers use.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import core as flax_core
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning
from t5x import models as t5x_models

from prompt_tuning_jax import checkpoints as checkpoint_io
from prompt_tuning_jax import prompts

PyTree = Any
EMBEDDING_PATH = "token_embedder/embedding"


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


@functools.cache
def _checkpoint_embedding(path: str) -> np.ndarray:
  return checkpoint_io.load_param(path, EMBEDDING_PATH)


class EncoderDecoderModel(t5x_models.EncoderDecoderModel):
  """`t5x.models.EncoderDecoderModel` for `prompt_tuning_jax.model.t5.Transformer`.

  Takes t5x's constructor arguments, plus `embedding_checkpoint_path`: the checkpoint whose token embedding the
  prompt initializer sees (None: the freshly initialized one; see the module docstring).
  """

  def __init__(self, *args: Any, embedding_checkpoint_path: str | None = None, **kwargs: Any):
    super().__init__(*args, **kwargs)
    self._embedding_checkpoint_path = embedding_checkpoint_path

  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Any],
                            input_types: Mapping[str, jnp.dtype] | None = None) -> flax_core.FrozenDict:
    """t5x's initial variables: unboxed 'params' plus their 'params_axes' (see the module docstring)."""
    types = {name: jnp.int32 for name in input_shapes}  # every feature of EncDecFeatureConverter is integer
    types.update(input_types or {})
    variables = flax_core.unfreeze(super().get_initial_variables(rng, input_shapes, types))
    boxed = variables.pop("params")
    params = nn.meta.unbox(boxed)
    if self._embedding_checkpoint_path is not None and "prompt" in params.get("encoder", {}):
      params = self._prompt_from_checkpoint_embedding(params, rng)
    return flax_core.freeze({"params": params, "params_axes": params_axes(boxed), **nn.meta.unbox(variables)})

  def _prompt_from_checkpoint_embedding(self, params: dict[str, Any], rng: jax.Array) -> dict[str, Any]:
    """`params` with the checkpoint's token embedding and the prompt re-initialized seeing it (same rng)."""
    embedding = _checkpoint_embedding(self._embedding_checkpoint_path)
    expected = params["token_embedder"]["embedding"]
    if tuple(embedding.shape) != tuple(expected.shape):
      raise ValueError(f"{self._embedding_checkpoint_path} has a token embedding of shape {tuple(embedding.shape)}, "
                       f"the model's is {tuple(expected.shape)}; use the model size file of that checkpoint")
    frozen = {**params, "token_embedder": {"embedding": jnp.asarray(embedding, expected.dtype)},
              "encoder": {k: v for k, v in params["encoder"].items() if k != "prompt"}}
    return prompts.init_missing_params(self.module, frozen, rng)

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
