"""Prompt initializers (Lester et al. 2021, section 3.2) and filling in a prompt after a partial restore.

Each factory returns `init(rng, shape, embedding) -> [prompt_length, embed]` float32, where `embedding` is the
model's token table [vocab, embed]. Initializers that read the table see the pretrained one when the prompt is
created by `init_missing_params` after the frozen model was restored.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Vocabulary(Protocol):
  """Anything with `encode(text) -> list[int]` (seqio vocabularies, sentencepiece processors)."""

  def encode(self, s: str) -> Sequence[int]: ...


def uniform(scale: float = 0.5) -> Callable[..., Array]:
  """Uniform in [-scale, scale] (the paper's random init uses 0.5; `flax_uniform` is flax's [0, scale))."""

  def init(rng: Array, shape: tuple[int, int], embedding: Array | None = None) -> Array:
    del embedding
    return jax.random.uniform(rng, shape, jnp.float32, minval=-scale, maxval=scale)

  return init


def flax_uniform(scale: float = 0.5) -> Callable[..., Array]:
  """Uniform in [0, scale): flax's `nn.initializers.uniform(scale)`, the same values for the same key.

  google-research/prompt-tuning's configs draw their "random uniform" prompts this way (scale 0.5); use it to
  reproduce that implementation's runs. `uniform` is the paper's [-0.5, 0.5].
  """

  def init(rng: Array, shape: tuple[int, int], embedding: Array | None = None) -> Array:
    del embedding
    return nn.initializers.uniform(scale)(rng, shape, jnp.float32)

  return init


def _sample_rows(rng: Array, embedding: Array, count: int, population_size: int) -> Array:
  """`count` distinct rows among the first `population_size` of `embedding` -> [count, embed]."""
  population = min(population_size, embedding.shape[0])
  if count > population:
    raise ValueError(f"cannot sample {count} distinct prompt rows from a population of {population} vocabulary "
                     f"embeddings; raise population_size or shorten the prompt")
  ids = jax.random.choice(rng, population, (count,), replace=False)
  return jnp.take(embedding, ids, axis=0).astype(jnp.float32)


def from_sampled_vocab(population_size: int = 5000) -> Callable[..., Array]:
  """Each row is the embedding of a token drawn without replacement from the first `population_size` ids."""

  def init(rng: Array, shape: tuple[int, int], embedding: Array) -> Array:
    return _sample_rows(rng, embedding, shape[0], population_size)

  return init


def _encode(vocabulary: Vocabulary, text: str) -> list[int]:
  ids = [int(i) for i in vocabulary.encode(text)]
  if not ids:
    raise ValueError(f"text {text!r} encodes to no tokens; give a non-empty string")
  return ids


def _check_ids(ids: Sequence[int], vocab_rows: int, what: str) -> None:
  if max(ids) >= vocab_rows:
    raise ValueError(f"{what} has token id {max(ids)} but the embedding has {vocab_rows} rows; "
                     f"use the vocabulary the model was trained with")


def from_class_labels(class_labels: Sequence[str], vocabulary: Vocabulary,
                      population_size: int = 5000) -> Callable[..., Array]:
  """Row i is the mean embedding of label i's sub-tokens; the remaining rows are sampled vocabulary.

  The paper initializes prompts with the embeddings of the output classes, so the prompt starts out "pointing at"
  the answers; labels spanning several tokens use the mean of their token embeddings.
  """
  if not class_labels:
    raise ValueError("class-label prompt init needs at least one label; set CLASS_LABELS")
  label_ids = [_encode(vocabulary, label) for label in class_labels]

  def init(rng: Array, shape: tuple[int, int], embedding: Array) -> Array:
    length = shape[0]
    if len(label_ids) > length:
      raise ValueError(f"{len(label_ids)} class labels do not fit a prompt of length {length}; "
                       f"raise PROMPT_LENGTH to at least {len(label_ids)}")
    for label, ids in zip(class_labels, label_ids, strict=True):
      _check_ids(ids, embedding.shape[0], f"class label {label!r}")
    rows = [jnp.mean(jnp.take(embedding, jnp.asarray(ids), axis=0), axis=0) for ids in label_ids]
    labels = jnp.stack(rows).astype(jnp.float32)  # [num_labels, embed]
    rest = length - len(label_ids)
    if rest == 0:
      return labels
    return jnp.concatenate([labels, _sample_rows(rng, embedding, rest, population_size)], axis=0)

  return init


def from_text(text: str, vocabulary: Vocabulary) -> Callable[..., Array]:
  """Embeddings of the tokens of `text`, tiled to fill a longer prompt or truncated to a shorter one."""
  ids = _encode(vocabulary, text)

  def init(rng: Array, shape: tuple[int, int], embedding: Array) -> Array:
    del rng
    _check_ids(ids, embedding.shape[0], f"prompt text {text!r}")
    tiled = np.resize(np.asarray(ids, np.int32), shape[0])  # repeats ids cyclically
    return jnp.take(embedding, jnp.asarray(tiled), axis=0).astype(jnp.float32)

  return init


def from_file(path: str | os.PathLike) -> Callable[..., Array]:
  """A prompt saved earlier: `.npy`, the reference `encoder.prompt.prompt.prompt` file, or a PEFT adapter dir."""
  from prompt_tuning_jax.checkpoints import prompt_files  # deferred: checkpoints imports heavy I/O libraries

  @functools.cache
  def load(length: int, embed_dim: int) -> np.ndarray:
    return prompt_files.load_prompt(path, length=length, embed_dim=embed_dim)

  def init(rng: Array, shape: tuple[int, int], embedding: Array | None = None) -> Array:
    del rng, embedding
    return jnp.asarray(load(int(shape[0]), int(shape[1])))

  return init


def init_missing_params(model: nn.Module, params: Any, rng: Array, encoder_length: int = 8,
                        decoder_length: int = 4, *, out_shardings: Any = None, donate_params: bool = False) -> Any:
  """Creates every parameter of `model` missing from `params` with its initializer, keeping the given ones.

  Used after a partial restore: the frozen model comes from a checkpoint, and the prompt is then initialized
  with the restored token embedding in view (sampled-vocabulary and class-label inits need the real table).

  Args:
    model: the Transformer (with a prompt factory).
    params: the (unboxed) parameter tree restored so far.
    rng: PRNG key for the missing parameters' initializers.
    encoder_length, decoder_length: dummy input lengths for the tracing call; any positive values work.
    out_shardings: shardings of the complete tree (e.g. from the logical axis rules), so a model too large for
      one device is created where it will live; None: jax's default placement.
    donate_params: hand the buffers of `params` to the result instead of copying them (they are deleted), so
      the restored model is not held twice while the missing parameters are created.

  Returns:
    The complete, unboxed parameter tree.
  """
  tokens = jnp.ones((1, encoder_length), jnp.int32)
  targets = jnp.ones((1, decoder_length), jnp.int32)

  def fill(params):
    _, variables = model.apply({"params": params}, tokens, targets, targets, enable_dropout=False,
                               rngs={"params": rng}, mutable=["params"])
    return nn.meta.unbox(variables["params"])

  placement = {} if out_shardings is None else {"out_shardings": out_shardings}
  return jax.jit(fill, donate_argnums=0 if donate_params else (), **placement)(params)
