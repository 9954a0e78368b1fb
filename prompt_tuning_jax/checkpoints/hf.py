"""Hugging Face T5 1.1 checkpoints (`config.json` + safetensors), read into T5X names and written back.

The name map is one table (FORMATS.md): PyTorch `nn.Linear` weights are [out, in] where T5X kernels are
[in, out], so kernels are transposed; the relative position table lives only in block 0 of the encoder and of
the decoder and is [buckets, heads] where T5X keeps [heads, buckets]; `shared.weight` is the token embedding and
`lm_head.weight` the untied output projection of T5 1.1. Only safetensors are read: `pytorch_model.bin` needs
pickle, which this project never unpickles. A directory to read may be local or any `tf.io.gfile` path
(gs://...): local weights are memory-mapped, others read whole into host memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from prompt_tuning_jax.checkpoints import inferred_config, storage
from prompt_tuning_jax.checkpoints.param_dtype import as_param
from prompt_tuning_jax.model.config import T5Config

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
_PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Duplicates of `shared.weight` that some older exports still carry.
_TIED_EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

_REQUIRED_CONFIG_KEYS = ("d_model", "d_kv", "d_ff", "num_heads", "num_layers")
_ATTENTION = {"query": "q", "key": "k", "value": "v", "out": "o"}
_MLP = ("wi_0", "wi_1", "wo")


def name_map(num_encoder_layers: int, num_decoder_layers: int) -> dict[str, tuple[str, bool]]:
  """Hugging Face name -> (T5X '/'-joined path, transpose) for a T5 1.1 of the given depth."""
  names = {"shared.weight": ("token_embedder/embedding", False),
           "lm_head.weight": ("decoder/logits_dense/kernel", True),
           "encoder.final_layer_norm.weight": ("encoder/encoder_norm/scale", False),
           "decoder.final_layer_norm.weight": ("decoder/decoder_norm/scale", False),
           "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
               ("encoder/relpos_bias/rel_embedding", True),
           "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
               ("decoder/relpos_bias/rel_embedding", True)}

  def attention(hf_prefix: str, t5x_prefix: str) -> None:
    for t5x_name, hf_name in _ATTENTION.items():
      names[f"{hf_prefix}.{hf_name}.weight"] = (f"{t5x_prefix}/{t5x_name}/kernel", True)

  def mlp(hf_prefix: str, t5x_prefix: str) -> None:
    for wi in _MLP:
      names[f"{hf_prefix}.DenseReluDense.{wi}.weight"] = (f"{t5x_prefix}/mlp/{wi}/kernel", True)

  for i in range(num_encoder_layers):
    hf, t5x = f"encoder.block.{i}.layer", f"encoder/layers_{i}"
    attention(f"{hf}.0.SelfAttention", f"{t5x}/attention")
    names[f"{hf}.0.layer_norm.weight"] = (f"{t5x}/pre_attention_layer_norm/scale", False)
    mlp(f"{hf}.1", t5x)
    names[f"{hf}.1.layer_norm.weight"] = (f"{t5x}/pre_mlp_layer_norm/scale", False)
  for i in range(num_decoder_layers):
    hf, t5x = f"decoder.block.{i}.layer", f"decoder/layers_{i}"
    attention(f"{hf}.0.SelfAttention", f"{t5x}/self_attention")
    names[f"{hf}.0.layer_norm.weight"] = (f"{t5x}/pre_self_attention_layer_norm/scale", False)
    attention(f"{hf}.1.EncDecAttention", f"{t5x}/encoder_decoder_attention")
    names[f"{hf}.1.layer_norm.weight"] = (f"{t5x}/pre_cross_attention_layer_norm/scale", False)
    mlp(f"{hf}.2", t5x)
    names[f"{hf}.2.layer_norm.weight"] = (f"{t5x}/pre_mlp_layer_norm/scale", False)
  return names


def is_hf_dir(path: str) -> bool:
  """Whether `path` is a directory with Hugging Face model files (a config or weights of any format)."""
  return any(storage.is_file(os.path.join(path, name))
             for name in (CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, *_PICKLED_WEIGHTS))


def _read_config(directory: str) -> dict[str, Any]:
  config_file = os.path.join(directory, CONFIG_FILE)
  if not storage.is_file(config_file):
    raise FileNotFoundError(f"{directory} has Hugging Face weights but no {CONFIG_FILE}; save the model with "
                            "`save_pretrained(dir, safe_serialization=True)`, which writes both")
  config = json.loads(storage.read_bytes(config_file))
  model_type = config.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise ValueError(f"{config_file} has model_type {model_type!r}; this package implements T5 1.1 "
                     "(model_type 't5' or 'mt5' with feed_forward_proj 'gated-gelu')")
  feed_forward_proj = config.get("feed_forward_proj", "relu")  # transformers' T5Config default
  if feed_forward_proj != "gated-gelu":
    raise ValueError(f"{config_file} has feed_forward_proj {feed_forward_proj!r}: a T5 v1.0-style (or other) MLP; "
                     "this package implements T5 1.1 (gated-gelu); use a t5-v1_1 / lm-adapt / flan-t5 checkpoint")
  # transformers ties lm_head to `shared` unless told otherwise, and then rescales by d_model**-0.5 (T5 v1.0).
  if config.get("tie_word_embeddings", True):
    raise ValueError(f"{config_file} ties the output projection to the token embedding (tie_word_embeddings is "
                     f"{config.get('tie_word_embeddings', 'unset, default true')}), as T5 v1.0 does; this package "
                     "implements T5 1.1 with an untied lm_head; use a t5-v1_1 / lm-adapt / flan-t5 checkpoint")
  missing = [key for key in _REQUIRED_CONFIG_KEYS if key not in config]
  if missing:
    raise ValueError(f"{config_file} lacks {', '.join(missing)}; it is not a complete transformers T5Config")
  return config


def _weight_files(directory: str) -> list[str]:
  """The safetensors files of `directory` (one, or the shards its index names)."""
  single = os.path.join(directory, WEIGHTS_FILE)
  index = os.path.join(directory, WEIGHTS_INDEX_FILE)
  if storage.is_file(single):
    return [single]
  if storage.is_file(index):
    weight_map = json.loads(storage.read_bytes(index))["weight_map"]
    return [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
  pickled = [name for name in _PICKLED_WEIGHTS if storage.is_file(os.path.join(directory, name))]
  if pickled:
    raise ValueError(f"{directory} holds only {pickled[0]}, a pickle this package will not load; convert it with "
                     "`T5ForConditionalGeneration.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`")
  raise FileNotFoundError(f"{directory} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}; save the model with "
                          "`save_pretrained(dir, safe_serialization=True)`")


def _read_tensors(files: list[str], dtype: Any) -> dict[str, tuple[np.ndarray, str]]:
  """Hugging Face name -> (array cast to `dtype`, file it came from)."""
  tensors = {}
  for file in files:
    if "://" in file:  # safe_open maps local files only
      for key, array in safetensors.numpy.load(storage.read_bytes(file)).items():
        tensors[key] = (as_param(array, dtype, key, file), file)
      continue
    with safe_open(file, framework="numpy") as f:
      for key in f.keys():
        tensors[key] = (as_param(f.get_tensor(key), dtype, key, file), file)
  return tensors


def load_hf_t5(directory: str, dtype: Any = np.float32) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a Hugging Face T5 1.1 directory into T5X names.

  Args:
    directory: holds `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`);
      local or any `tf.io.gfile` path (gs://...).
    dtype: parameter dtype to cast every array to.

  Returns:
    (params, config_fields): params is a nested dict of numpy arrays with T5X names (kernels [in, out],
    `encoder/relpos_bias/rel_embedding` [heads, buckets]); config_fields holds the T5Config fields the
    checkpoint determines (vocab_size from the embedding's rows, which some lm-adapt configs understate, the
    shapes from config.json, checked against the arrays, plus relative_attention_max_distance and
    layer_norm_epsilon, which only config.json knows).
  """
  files = _weight_files(directory)
  config = _read_config(directory)
  tensors = _read_tensors(files, dtype)
  num_encoder_layers = config["num_layers"]
  num_decoder_layers = config.get("num_decoder_layers") or num_encoder_layers
  params = {}
  for hf_name, (t5x_path, transpose) in name_map(num_encoder_layers, num_decoder_layers).items():
    if hf_name == "lm_head.weight" and hf_name not in tensors:
      raise ValueError(f"{', '.join(files)} has no lm_head.weight: the output projection is tied to the token "
                       "embedding, as in T5 v1.0; this package implements T5 1.1 (untied lm_head)")
    if hf_name not in tensors:
      raise ValueError(f"{', '.join(files)} has no tensor {hf_name} (T5X {t5x_path}), which a T5 1.1 with "
                       f"{num_encoder_layers}+{num_decoder_layers} layers needs; the file is incomplete or not T5 1.1")
    array, _ = tensors.pop(hf_name)
    params[t5x_path] = np.ascontiguousarray(array.T) if transpose else array
  for copy in _TIED_EMBEDDING_COPIES:
    if copy in tensors:
      array, file = tensors.pop(copy)
      if not np.array_equal(array, params["token_embedder/embedding"]):
        raise ValueError(f"{file}: {copy} differs from shared.weight; T5 1.1 shares one token embedding")
  if tensors:
    names = sorted(tensors)
    raise ValueError(f"{', '.join(files)} holds {len(names)} tensors a T5 1.1 with {num_encoder_layers}+"
                     f"{num_decoder_layers} layers does not have (e.g. {', '.join(names[:3])}); check num_layers / "
                     "num_decoder_layers in config.json")
  params = traverse_util.unflatten_dict(params, sep="/")

  config_fields = {
      "emb_dim": config["d_model"], "num_heads": config["num_heads"], "head_dim": config["d_kv"],
      "mlp_dim": config["d_ff"], "num_encoder_layers": num_encoder_layers,
      "num_decoder_layers": num_decoder_layers,
      "relative_attention_num_buckets": config.get("relative_attention_num_buckets", 32),
      "relative_attention_max_distance": config.get("relative_attention_max_distance", 128),
      "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6)}
  from_arrays = inferred_config.infer_config(params)
  disagree = [f"{name} {value} (arrays say {from_arrays[name]})" for name, value in config_fields.items()
              if name in from_arrays and from_arrays[name] != value]
  if disagree:
    raise ValueError(f"{os.path.join(directory, CONFIG_FILE)} disagrees with its weights: {', '.join(disagree)}; "
                     "the directory mixes files of different models")
  return params, {**config_fields, "vocab_size": from_arrays["vocab_size"]}


def hf_config(config: T5Config) -> dict[str, Any]:
  """The `config.json` of transformers' T5ForConditionalGeneration for a T5 1.1 of this shape."""
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
      "vocab_size": config.vocab_size, "d_model": config.emb_dim, "d_kv": config.head_dim, "d_ff": config.mlp_dim,
      "num_heads": config.num_heads, "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "layer_norm_epsilon": config.layer_norm_epsilon, "dropout_rate": config.dropout_rate,
      "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
      "tie_word_embeddings": False, "initializer_factor": 1.0, "use_cache": True,
      # T5 starts decoding from the padding id, as T5X does.
      "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "torch_dtype": "float32"}


def save_hf_t5(params: Mapping[str, Any], config: T5Config, directory: str) -> None:
  """Writes `params` (T5X names) as a Hugging Face T5 1.1 directory: `config.json` + `model.safetensors`.

  `T5ForConditionalGeneration.from_pretrained(directory)` loads it. Every parameter is written as float32; a
  parameter tree with anything beyond the frozen T5 1.1 (e.g. a prompt) is refused: a prompt is exported with
  `prompt_files.save_peft_adapter`.
  """
  inferred_config.check_config(config, inferred_config.infer_config(params), "the parameters to export")
  flat = {name: np.asarray(value) for name, value in traverse_util.flatten_dict(params, sep="/").items()}
  tensors = {}
  for hf_name, (t5x_path, transpose) in name_map(config.num_encoder_layers, config.num_decoder_layers).items():
    if t5x_path not in flat:
      raise ValueError(f"the parameters to export have no {t5x_path} (Hugging Face {hf_name}); pass the complete "
                       "T5 1.1 parameter tree")
    array = as_param(flat.pop(t5x_path), np.float32, t5x_path, "the parameters to export")
    tensors[hf_name] = np.ascontiguousarray(array.T if transpose else array)
  if flat:
    raise ValueError(f"the parameters to export hold {', '.join(sorted(flat))}, which Hugging Face T5 has no name "
                     "for; export a prompt with prompt_files.save_peft_adapter and pass the frozen T5 params alone")
  os.makedirs(directory, exist_ok=True)
  # transformers refuses safetensors files whose metadata does not name the framework.
  save_file(tensors, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(hf_config(config), f, indent=2, sort_keys=True)
