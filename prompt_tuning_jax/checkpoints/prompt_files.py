"""Prompt files: the reference `.npy` layout and PEFT prompt-tuning adapters, read and written.

A prompt is a float32 array [prompt_length, embed]. google-research/prompt-tuning exports it per checkpoint as
`MODEL_DIR/numpy_checkpoints/checkpoint_N/encoder.prompt.prompt.prompt` (a `.npy` without the suffix) and
releases prompts as `NAME.npy`. PEFT's `save_pretrained` of a prompt-tuning model writes
`adapter_model.safetensors` (key `prompt_embeddings`) and `adapter_config.json`.

What PEFT does with the rows of a seq2seq adapter (checked in peft 0.21.2, `PeftModelForSeq2SeqLM`): it
allocates num_virtual_tokens x num_transformer_submodules rows (2 x P for SEQ_2_SEQ_LM), but for PROMPT_TUNING
its `forward` and `generate` prepend only rows [:P] to the encoder's input embeddings; rows [P:] are never read
(they get no gradient and keep their initial values). The decoder half feeds the decoder only for other
prompt-learning types (e.g. multitask prompt tuning). So the encoder prompt is rows [:P], and
`save_peft_adapter` fills rows [P:] with a copy of it only to give PEFT the shape it expects.

Every path may be local or on any filesystem `tf.io.gfile` knows (gs://...): files are read and written whole
through `storage` (a prompt is at most a few MB).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
import safetensors.numpy
import tensorflow as tf

from prompt_tuning_jax.checkpoints import storage
from prompt_tuning_jax.checkpoints.param_dtype import as_param

# The reference repo's name for the prompt parameter, `encoder/prompt/prompt/prompt` joined with dots.
NUMPY_PROMPT_NAME = "encoder.prompt.prompt.prompt"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PICKLED_WEIGHTS_FILE = "adapter_model.bin"
PEFT_PROMPT_KEY = "prompt_embeddings"
PEFT_PROMPT_INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")


def _load_peft_prompt(directory: str) -> np.ndarray:
  """The encoder prompt [P, embed] of a PEFT prompt-tuning adapter directory."""
  config_file = os.path.join(directory, PEFT_CONFIG_FILE)
  weights_file = os.path.join(directory, PEFT_WEIGHTS_FILE)
  if not storage.is_file(config_file):
    raise FileNotFoundError(f"prompt directory {directory} has no {PEFT_CONFIG_FILE}; pass a PEFT adapter "
                            "directory (save_pretrained of a prompt-tuning PeftModel) or a .npy file")
  if not storage.is_file(weights_file):
    pickled = storage.is_file(os.path.join(directory, PEFT_PICKLED_WEIGHTS_FILE))
    fix = (f"it holds {PEFT_PICKLED_WEIGHTS_FILE}, a pickle this package will not load: re-save the adapter with "
           "`save_pretrained(dir, safe_serialization=True)`" if pickled else "re-save the adapter with PEFT")
    raise FileNotFoundError(f"prompt directory {directory} has no {PEFT_WEIGHTS_FILE}; {fix}")
  config = json.loads(storage.read_bytes(config_file))
  if config.get("peft_type") != "PROMPT_TUNING":
    raise ValueError(f"{config_file} has peft_type {config.get('peft_type')!r}; only PROMPT_TUNING adapters hold "
                     "a prompt this model can use")
  tensors = safetensors.numpy.load(storage.read_bytes(weights_file))
  if PEFT_PROMPT_KEY not in tensors:
    raise ValueError(f"{weights_file} has no {PEFT_PROMPT_KEY!r} tensor (keys: {sorted(tensors)}); it is not a "
                     "PEFT prompt-tuning adapter")
  rows = tensors[PEFT_PROMPT_KEY]
  length = config["num_virtual_tokens"]
  submodules = config.get("num_transformer_submodules") or 1
  if rows.ndim != 2 or rows.shape[0] != length * submodules:
    raise ValueError(f"{weights_file}: {PEFT_PROMPT_KEY} has shape {rows.shape}, but {PEFT_CONFIG_FILE} says "
                     f"{length} virtual tokens x {submodules} submodules rows; the adapter files do not belong "
                     "together")
  return as_param(rows[:length], np.float32, PEFT_PROMPT_KEY, weights_file)  # encoder prompt: the first P rows


def _load_npy_prompt(path: str) -> np.ndarray:
  raw = storage.read_bytes(path)
  if not raw:
    raise ValueError(f"prompt file {path} is empty (0 bytes); pass a prompt saved with np.save or re-export it")
  if not raw.startswith(b"\x93NUMPY") and not raw.startswith(b"PK"):
    raise ValueError(f"prompt file {path} is not a .npy file (it starts with {raw[:16]!r}); pass a prompt saved "
                     "with np.save, a reference encoder.prompt.prompt.prompt file or a PEFT adapter directory")
  try:
    prompt = np.load(io.BytesIO(raw), allow_pickle=False)
  except EOFError:
    raise ValueError(f"prompt file {path} is truncated ({len(raw)} bytes); re-export or copy it again") from None
  except ValueError as e:
    if str(e).startswith("Object arrays"):
      raise ValueError(f"prompt file {path} holds an object array, which this package will not unpickle; re-save "
                       "the prompt as a float array with np.save(path, np.asarray(prompt, np.float32))") from None
    raise ValueError(f"prompt file {path} is a damaged or truncated .npy ({e}; {len(raw)} bytes); re-export or "
                     "copy it again") from None
  if not isinstance(prompt, np.ndarray):  # an .npz archive
    raise ValueError(f"prompt file {path} is an .npz archive; pass the single .npy array of the prompt")
  if prompt.ndim != 2:
    raise ValueError(f"prompt file {path} has shape {prompt.shape}; a prompt is [prompt_length, embed]")
  return as_param(prompt, np.float32, "prompt", path)


def load_prompt(path: str | os.PathLike, length: int | None = None,
                embed_dim: int | None = None) -> np.ndarray:
  """Reads a prompt from a `.npy` file, the reference `encoder.prompt.prompt.prompt` file or a PEFT adapter dir.

  Args:
    path: the file or PEFT adapter directory; local or any `tf.io.gfile` path (gs://...).
    length: the model's prompt length; a different one is an error (None: accept any).
    embed_dim: the model's embed dim; a different width is an error (None: accept any).

  Returns:
    float32 array [prompt_length, embed] (float64 files are cast).
  """
  path = os.fspath(path)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"prompt file {path} does not exist")
  prompt = _load_peft_prompt(path) if tf.io.gfile.isdir(path) else _load_npy_prompt(path)
  if embed_dim is not None and prompt.shape[1] != embed_dim:
    raise ValueError(f"prompt file {path} has width {prompt.shape[1]}, model embed dim is {embed_dim}; "
                     "re-export the prompt for this model size")
  if length is not None and prompt.shape[0] != length:
    raise ValueError(f"prompt file {path} has length {prompt.shape[0]}, the model's prompt length is {length}; "
                     f"set the prompt length to {prompt.shape[0]} or train a prompt of length {length}")
  return prompt


def _as_prompt(prompt: Any) -> np.ndarray:
  prompt = np.asarray(prompt)
  if prompt.ndim != 2:
    raise ValueError(f"a prompt is [prompt_length, embed], got shape {prompt.shape}")
  return as_param(prompt, np.float32, "prompt", "the prompt to save")


def save_prompt_npy(prompt: Any, path: str | os.PathLike) -> str:
  """Writes `prompt` [P, embed] as float32 `.npy` at exactly `path` (no `.npy` suffix is added); returns it.

  `path` may be local or any `tf.io.gfile` path (gs://...); its directory is created.
  """
  path = os.fspath(path)
  buffer = io.BytesIO()  # a file object, because np.save(str) would append '.npy'
  np.save(buffer, _as_prompt(prompt), allow_pickle=False)
  storage.write_bytes(path, buffer.getvalue())
  return path


def export_numpy_checkpoint(prompt: Any, model_dir: str | os.PathLike, step: int) -> str:
  """Writes the reference repo's export, `MODEL_DIR/numpy_checkpoints/checkpoint_N/encoder.prompt.prompt.prompt`.

  Returns:
    The file written.
  """
  path = os.path.join(os.fspath(model_dir), "numpy_checkpoints", f"checkpoint_{step}", NUMPY_PROMPT_NAME)
  return save_prompt_npy(prompt, path)


def save_peft_adapter(prompt: Any, directory: str | os.PathLike, *, num_layers: int, num_attention_heads: int,
                      base_model_name_or_path: str | None = None, num_transformer_submodules: int = 2,
                      prompt_tuning_init: str = "RANDOM", prompt_tuning_init_text: str | None = None,
                      tokenizer_name_or_path: str | None = None) -> str:
  """Writes `prompt` [P, embed] as a PEFT prompt-tuning adapter that `peft.PeftModel.from_pretrained` loads.

  `adapter_model.safetensors` holds `prompt_embeddings` [P x num_transformer_submodules, embed]: the prompt,
  then copies of it for the remaining submodules (PEFT never reads those rows for PROMPT_TUNING; see the
  module docstring). `adapter_config.json` records a SEQ_2_SEQ_LM prompt-tuning config.

  Args:
    prompt: [P, embed].
    directory: created if missing; local or any `tf.io.gfile` path (gs://...).
    num_layers, num_attention_heads: the T5 model's, recorded as PEFT records them (it uses them only for
      prefix tuning).
    base_model_name_or_path: the Hugging Face model the prompt was trained for, if it has a name.
    num_transformer_submodules: 2 for encoder-decoder models (PEFT's default for SEQ_2_SEQ_LM), or 1.
    prompt_tuning_init: how the prompt was initialised, one of RANDOM, TEXT, SAMPLE_VOCAB (PEFT's names).
    prompt_tuning_init_text, tokenizer_name_or_path: PEFT requires both for TEXT.

  Returns:
    The directory written.
  """
  directory = os.fspath(directory)
  prompt = _as_prompt(prompt)
  if num_transformer_submodules not in (1, 2):
    raise ValueError(f"num_transformer_submodules must be 1 or 2, got {num_transformer_submodules}")
  if prompt_tuning_init not in PEFT_PROMPT_INITS:
    raise ValueError(f"prompt_tuning_init must be one of {PEFT_PROMPT_INITS}, got {prompt_tuning_init!r}")
  if prompt_tuning_init == "TEXT" and not (prompt_tuning_init_text and tokenizer_name_or_path):
    raise ValueError("prompt_tuning_init 'TEXT' needs prompt_tuning_init_text and tokenizer_name_or_path "
                     "(PEFT refuses the config otherwise)")
  length, embed = prompt.shape
  config = {
      "peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": length, "token_dim": embed,
      "num_transformer_submodules": num_transformer_submodules, "num_attention_heads": num_attention_heads,
      "num_layers": num_layers, "prompt_tuning_init": prompt_tuning_init,
      "prompt_tuning_init_text": prompt_tuning_init_text, "tokenizer_name_or_path": tokenizer_name_or_path,
      "tokenizer_kwargs": None, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
      "revision": None, "auto_mapping": None, "modules_to_save": None}
  rows = np.concatenate([prompt] * num_transformer_submodules, axis=0)
  storage.write_bytes(os.path.join(directory, PEFT_WEIGHTS_FILE),
                      safetensors.numpy.save({PEFT_PROMPT_KEY: rows}, metadata={"format": "pt"}))
  storage.write_bytes(os.path.join(directory, PEFT_CONFIG_FILE),
                      json.dumps(config, indent=2, sort_keys=True).encode())
  return directory
