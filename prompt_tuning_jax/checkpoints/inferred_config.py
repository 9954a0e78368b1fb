"""What a checkpoint's arrays say about the model's shape, and a one-line verdict when the config disagrees.

A T5 1.1 parameter tree determines vocab_size, emb_dim, num_heads, head_dim, mlp_dim, both depths and the number
of relative-position buckets. It does not determine relative_attention_max_distance or layer_norm_epsilon, which
come from the config (or a Hugging Face `config.json`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flax import traverse_util

from prompt_tuning_jax.model.config import SIZES, T5Config, config_for_size

# Where a size's model config lives, and how to override one field from the command line.
GIN_SIZE_FILE = "gin_configs/models/t5_1_1_{size}.gin"
GIN_BINDING = "--gin.T5Config.{field}={value}"
_ARCHITECTURE_FIELDS = ("emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers", "num_decoder_layers")
_LAYER = re.compile(r"layers_(\d+)")


def _shape(params: Mapping[str, Any], path: str) -> tuple[int, ...] | None:
  value = params.get(path)
  return None if value is None else tuple(value.shape)


def _num_layers(flat: Mapping[str, Any], stack: str, source: str) -> int | None:
  indices = {int(m.group(1)) for path in flat if path.startswith(f"{stack}/")
             for m in [_LAYER.fullmatch(path.split("/")[1])] if m}
  if not indices:
    return None
  if indices != set(range(len(indices))):
    missing = sorted(set(range(max(indices) + 1)) - indices)
    raise ValueError(f"{source}: {stack} layers are not numbered 0..{max(indices)} (missing layers_{missing[0]}); "
                     "the checkpoint is incomplete")
  return len(indices)


def infer_config(params: Mapping[str, Any], source: str = "parameters") -> dict[str, int]:
  """T5Config fields determined by the shapes in a T5X-named parameter tree.

  Args:
    params: nested dict of arrays or jax.ShapeDtypeStruct (anything with `.shape`), T5X names.
    source: named in errors.

  Returns:
    The subset of {vocab_size, emb_dim, num_heads, head_dim, mlp_dim, num_encoder_layers, num_decoder_layers,
    relative_attention_num_buckets} that the present arrays determine.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  fields = {}
  if (embedding := _shape(flat, "token_embedder/embedding")) is not None:  # [vocab, embed]
    fields["vocab_size"], fields["emb_dim"] = embedding
  if (relpos := _shape(flat, "encoder/relpos_bias/rel_embedding")) is not None:  # [heads, buckets]
    fields["num_heads"], fields["relative_attention_num_buckets"] = relpos
  query = _shape(flat, "encoder/layers_0/attention/query/kernel")  # [embed, heads * head_dim]
  if query is not None and "num_heads" in fields:
    if query[1] % fields["num_heads"]:
      raise ValueError(f"{source}: attention query width {query[1]} is not a multiple of the {fields['num_heads']} "
                       "heads of the relative position table; the checkpoint mixes model sizes")
    fields["head_dim"] = query[1] // fields["num_heads"]
  if (wi := _shape(flat, "encoder/layers_0/mlp/wi_0/kernel")) is not None:  # [embed, mlp]
    fields["mlp_dim"] = wi[1]
  for stack, field in (("encoder", "num_encoder_layers"), ("decoder", "num_decoder_layers")):
    if (count := _num_layers(flat, stack, source)) is not None:
      fields[field] = count
  return fields


def _closest_size(inferred: Mapping[str, Any]) -> tuple[str | None, list[str]]:
  """The named size whose architecture matches `inferred`, and the fields still to override on top of it."""
  for size in SIZES:
    sized = config_for_size(size)
    if all(getattr(sized, f) == inferred[f] for f in _ARCHITECTURE_FIELDS if f in inferred):
      return size, [f for f in inferred if getattr(sized, f) != inferred[f]]
  return None, []


def check_config(config: T5Config, inferred: Mapping[str, Any], source: str) -> None:
  """Raises one ValueError line naming every field where `config` disagrees with the checkpoint.

  Args:
    config: the model config about to be used.
    inferred: T5Config fields the checkpoint determines (`infer_config`, or `load_params`'s second result).
    source: the checkpoint path, named in the message.
  """
  mismatches = [(f, value, getattr(config, f)) for f, value in inferred.items() if getattr(config, f) != value]
  if not mismatches:
    return
  found = "; ".join(f"{f} is {ckpt} in the checkpoint but {cfg} in the config" for f, ckpt, cfg in mismatches)
  size, overrides = _closest_size(inferred)
  if size is None:
    overrides = [f for f, _, _ in mismatches]
  bindings = " ".join(GIN_BINDING.format(field=f, value=inferred[f]) for f in overrides)
  if size is None:
    fix = f"pass {bindings}"
  elif overrides:
    fix = f"use {GIN_SIZE_FILE.format(size=size)} with {bindings}"
  else:
    fix = f"use {GIN_SIZE_FILE.format(size=size)}"
  raise ValueError(f"{source} does not match the model config: {found}; {fix}")
