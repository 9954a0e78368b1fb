"""A prompt bank: N named prompts that one frozen model serves in one mixed batch (Lester et al. 2021, section 1).

The prompts are stacked into one array [N, P_max, embed], each LEFT-padded with zero rows to the longest, and a
mask [N, P_max] marks the real rows. An example names its prompt by index; `rows` gathers its prompt and mask,
and the model (`Transformer.encode(prompt=, prompt_mask=)`) prepends them and masks the pad rows as attention keys
in the encoder and in cross-attention. T5's positions are relative, so padding on the left leaves every offset
between a real prompt row and an input token as it was: an example gets exactly what it gets alone with its
own prompt.

Prompts come from any file `load_prompt_source` reads: `.npy`, the reference `encoder.prompt.prompt.prompt`
export, a PEFT adapter directory, or a training run's `checkpoint_N` / MODEL_DIR (its latest checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from flax import traverse_util

from prompt_tuning_jax.checkpoints import prompt_files, t5x
from prompt_tuning_jax.training import checkpointing

Array = jax.Array
PyTree = Any


def load_prompt_source(path: str | os.PathLike, embed_dim: int | None = None) -> np.ndarray:
  """A prompt [P, embed] from a prompt file, a PEFT adapter dir, a training `checkpoint_N` or its MODEL_DIR.

  Args:
    path: `.npy` / `encoder.prompt.prompt.prompt` file, PEFT adapter directory (has adapter_config.json),
      a training run's `checkpoint_N` directory, or its MODEL_DIR (the latest checkpoint_N is read).
    embed_dim: the model's width; a prompt of another width is an error naming the fix.
  """
  path = os.fspath(path)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"prompt file {path} does not exist; pass a .npy prompt, a PEFT adapter directory "
                            "or a training MODEL_DIR / checkpoint_N")
  is_peft = tf.io.gfile.exists(os.path.join(path, prompt_files.PEFT_CONFIG_FILE))
  if not tf.io.gfile.isdir(path) or is_peft:
    return prompt_files.load_prompt(path, embed_dim=embed_dim)
  directory, _ = _resolve_checkpoint(path)
  if t5x.orbax_state_dir(directory) is None:
    raise ValueError(f"{directory} has no orbax state; pass a training run's checkpoint_N or MODEL_DIR")
  flat = traverse_util.flatten_dict(t5x.load_t5x_orbax(directory))
  if checkpointing.PROMPT_PATH not in flat:
    raise ValueError(f"{directory} holds no prompt ({'/'.join(checkpointing.PROMPT_PATH)}); it is not a "
                     "prompt-tuning run (a fine-tuned model is a model checkpoint: pass it as the model)")
  prompt = np.asarray(flat[checkpointing.PROMPT_PATH], np.float32)
  if embed_dim is not None and prompt.shape[1] != embed_dim:
    raise ValueError(f"prompt in {directory} has width {prompt.shape[1]}, model embed dim is {embed_dim}; use "
                     "the model size the prompt was trained with")
  return prompt


@dataclasses.dataclass(frozen=True)
class PromptBank:
  """N named prompts, left-padded into one array.

  Attributes:
    names: the prompts' names, in bank order (an example's prompt id indexes this).
    prompts: [N, P_max, embed] float32; prompt i's real rows are the last `lengths[i]`.
    lengths: each prompt's length P_i.
  """

  names: tuple[str, ...]
  prompts: np.ndarray
  lengths: tuple[int, ...]

  @classmethod
  def from_prompts(cls, named: Sequence[tuple[str, np.ndarray]] | Mapping[str, np.ndarray],
                   embed_dim: int | None = None) -> PromptBank:
    """Builds a bank from (name, prompt [P_i, embed]) pairs; names must be distinct, widths equal."""
    pairs = list(named.items()) if isinstance(named, Mapping) else list(named)
    if not pairs:
      raise ValueError("a prompt bank needs at least one prompt; pass --prompt NAME=PATH")
    seen: set[str] = set()
    for name, _ in pairs:
      if not name:
        raise ValueError("a bank prompt has an empty name; write --prompt NAME=PATH")
      if name in seen:
        raise ValueError(f"the bank has two prompts named {name!r}; give each prompt its own name")
      seen.add(name)
    arrays = [np.asarray(prompt, np.float32) for _, prompt in pairs]
    for (name, _), prompt in zip(pairs, arrays, strict=True):
      if prompt.ndim != 2 or prompt.shape[0] < 1:
        raise ValueError(f"prompt {name!r} has shape {prompt.shape}; a prompt is [prompt_length >= 1, embed]")
      width = embed_dim if embed_dim is not None else arrays[0].shape[1]
      if prompt.shape[1] != width:
        what = "model embed dim" if embed_dim is not None else f"prompt {pairs[0][0]!r}'s width"
        raise ValueError(f"prompt {name!r} has width {prompt.shape[1]}, {what} is {width}; every prompt must "
                         "be trained for this model size")
    longest = max(p.shape[0] for p in arrays)
    stacked = np.zeros((len(arrays), longest, arrays[0].shape[1]), np.float32)
    for i, prompt in enumerate(arrays):
      stacked[i, longest - prompt.shape[0]:] = prompt  # left padding: real rows end next to the inputs
    return cls(tuple(name for name, _ in pairs), stacked, tuple(int(p.shape[0]) for p in arrays))

  @classmethod
  def load(cls, paths: Sequence[tuple[str, str]] | Mapping[str, str], embed_dim: int | None = None) -> PromptBank:
    """Reads (name, path) pairs with `load_prompt_source` (every file is checked before the bank is built)."""
    pairs = list(paths.items()) if isinstance(paths, Mapping) else list(paths)
    return cls.from_prompts([(name, load_prompt_source(path, embed_dim)) for name, path in pairs], embed_dim)

  def __len__(self) -> int:
    return len(self.names)

  @property
  def max_length(self) -> int:
    return int(self.prompts.shape[1])

  @property
  def embed_dim(self) -> int:
    return int(self.prompts.shape[2])

  @property
  def mask(self) -> np.ndarray:
    """[N, P_max] bool, True on each prompt's real (rightmost) rows."""
    return np.arange(self.max_length)[None, :] >= (self.max_length - np.asarray(self.lengths))[:, None]

  def prompt(self, name: str) -> np.ndarray:
    """The prompt called `name`, unpadded [P, embed]."""
    i = self.index(name)
    return self.prompts[i, self.max_length - self.lengths[i]:]

  def index(self, name: str) -> int:
    """The prompt id of `name`; an unknown name is a ValueError listing the bank."""
    try:
      return self.names.index(name)
    except ValueError:
      raise ValueError(f"no prompt named {name!r} in the bank ({', '.join(self.names)}); name one of these or "
                       "add it with --prompt NAME=PATH") from None

  def rows(self, prompt_ids: Array) -> tuple[Array, Array]:
    """Each example's prompt and mask: prompt_ids [batch] -> ([batch, P_max, embed], [batch, P_max] bool)."""
    return gather_rows(jnp.asarray(self.prompts), jnp.asarray(self.mask), prompt_ids)

  def encode(self, model: nn.Module, params: PyTree, prompt_ids: Array,
             encoder_input_tokens: Array) -> tuple[Array, Array]:
    """`encode_mixed` with this bank: (encoded [batch, source, embed], encoder_mask [batch, source])."""
    return encode_mixed(model, params, jnp.asarray(self.prompts), jnp.asarray(self.mask),
                        jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(encoder_input_tokens, jnp.int32))


def gather_rows(prompts: Array, mask: Array, prompt_ids: Array) -> tuple[Array, Array]:
  """prompts [N, P, embed], mask [N, P], prompt_ids [batch] -> ([batch, P, embed], [batch, P]); jit-friendly."""
  return jnp.take(prompts, prompt_ids, axis=0), jnp.take(mask, prompt_ids, axis=0)


@functools.partial(jax.jit, static_argnames=("model",))
def encode_mixed(model: nn.Module, params: PyTree, prompts: Array, prompts_mask: Array, prompt_ids: Array,
                 encoder_input_tokens: Array) -> tuple[Array, Array]:
  """One encoder pass over a batch whose examples use different prompts of a bank.

  Args:
    model: a `Transformer`; its own prompt module, if any, is bypassed.
    params: the frozen model's parameters (a prompt parameter in them is not read).
    prompts: the bank's [N, P_max, embed]; prompts_mask: its [N, P_max] bool.
    prompt_ids: [batch] int32, each example's prompt.
    encoder_input_tokens: [batch, length] int32, 0-padded.

  Returns:
    (encoded [batch, P_max + length, embed], encoder_mask [batch, P_max + length] bool: False on the pad rows
    of shorter prompts and on input padding), what `decoding.decode` and `scoring.score` take.
  """
  prompt, prompt_mask = gather_rows(prompts, prompts_mask, prompt_ids)
  encoded = model.apply({"params": params}, encoder_input_tokens, enable_dropout=False, prompt=prompt,
                        prompt_mask=prompt_mask, method=model.encode)
  return encoded, jnp.concatenate([prompt_mask, encoder_input_tokens > 0], axis=1)


def parse_prompt_flags(specs: Sequence[str]) -> list[tuple[str, str]]:
  """`--prompt` values -> (name, path) pairs: `NAME=PATH`, or a directory whose entries are the prompts.

  A directory entry `NAME.npy` (or any file) is named by its file name without `.npy`; a subdirectory (a PEFT
  adapter or a training MODEL_DIR) by its directory name. A bare `PATH` that is not a bank directory is one
  prompt named after its file.
  """
  pairs: list[tuple[str, str]] = []
  for spec in specs:
    name, sep, path = spec.partition("=")
    if sep:
      pairs.append((name.strip(), path))
      continue
    path = spec
    is_peft = tf.io.gfile.exists(os.path.join(path, prompt_files.PEFT_CONFIG_FILE))
    is_bank_dir = tf.io.gfile.isdir(path) and not is_peft and not _is_training_dir(path)
    if not is_bank_dir:
      pairs.append((_name_of(path), path))
      continue
    entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(path) if not e.startswith("."))
    if not entries:
      raise ValueError(f"prompt directory {path} is empty; put NAME.npy files or PEFT adapter directories in it")
    pairs.extend((_name_of(entry), os.path.join(path, entry)) for entry in entries)
  return pairs


def _name_of(path: str) -> str:
  base = os.path.basename(os.fspath(path).rstrip("/"))
  return base[:-len(".npy")] if base.endswith(".npy") else base


def _resolve_checkpoint(path: str) -> tuple[str, int]:
  # training.runs imports the evaluation, which imports inference.decoding: import it when used, not at load.
  from prompt_tuning_jax.training import runs

  return runs.resolve_checkpoint(path)


def _is_training_dir(path: str) -> bool:
  try:
    _resolve_checkpoint(path)
  except FileNotFoundError:
    return False
  return True
