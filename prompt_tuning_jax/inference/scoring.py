"""Teacher-forced scoring of given targets and rank classification: no decoding.

Public API (stable):

  score(model, params, encoder_input_tokens, target_tokens, *, target_mask=None, encoded=None, encoder_mask=None)
      -> [batch] float32: the log-likelihood of each target, summed over its tokens
  rank_classify(model, params, encoder_input_tokens, candidate_tokens, *, encoded=None, encoder_mask=None)
      -> (predictions [batch] int32: index of the most likely candidate, scores [batch, candidates] float32)
  candidate_tokens(vocabulary, labels, max_length=None) -> [candidates, length] int32 (each label + EOS, 0-padded)

Rank classification scores every candidate for every example in one batched teacher-forced pass
(examples x candidates rows): the encoder runs once per example and its output is broadcast to the candidates.
Ties go to the first candidate (jnp.argmax).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning_jax.inference.decoding import as_int32, decoder_logits, encode

Array = jax.Array
PyTree = Any


def default_target_mask(target_tokens: Array) -> Array:
  """[batch, length] -> bool, True up to the last non-zero token (0 is padding at the end, not inside)."""
  nonzero = (target_tokens > 0).astype(jnp.int32)
  return jnp.flip(jnp.cumsum(jnp.flip(nonzero, axis=-1), axis=-1), axis=-1) > 0


def _log_likelihood(model: nn.Module, params: PyTree, encoded: Array, encoder_mask: Array, target_tokens: Array,
                    target_mask: Array | None) -> Array:
  """[batch] summed log-probabilities of `target_tokens` [batch, length] at `target_mask` (default mask if None)."""
  if target_mask is None:
    target_mask = default_target_mask(target_tokens)
  decoder_input_tokens = jnp.pad(target_tokens[:, :-1], ((0, 0), (1, 0)))  # shifted right, T5 starts from id 0
  logits, _ = decoder_logits(model, params, encoded, encoder_mask, decoder_input_tokens, target_mask)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), target_tokens[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(target_mask, log_probs, 0.0), axis=-1)


_score = jax.jit(_log_likelihood, static_argnames=("model",))


@functools.partial(jax.jit, static_argnames=("model",))
def _rank(model: nn.Module, params: PyTree, encoded: Array, encoder_mask: Array,
          candidate_tokens: Array) -> tuple[Array, Array]:
  batch, num_candidates = encoded.shape[0], candidate_tokens.shape[0]
  # Row (example b, candidate c) is b * num_candidates + c; the encoder output is copied, not recomputed.
  rows = lambda x: jnp.repeat(x, num_candidates, axis=0)
  scores = _log_likelihood(model, params, rows(encoded), rows(encoder_mask), jnp.tile(candidate_tokens, (batch, 1)),
                           None).reshape(batch, num_candidates)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32), scores


def _encoded(model: nn.Module, params: PyTree, encoder_input_tokens: Array | None, encoded: Array | None,
             encoder_mask: Array | None) -> tuple[Array, Array]:
  if encoded is not None:
    if encoder_mask is None:
      raise ValueError("encoded was given without encoder_mask; pass the [batch, source] validity from encode()")
    return encoded, encoder_mask
  if encoder_input_tokens is None:
    raise ValueError("pass encoder_input_tokens, or encoded with encoder_mask")
  return encode(model, params, as_int32(encoder_input_tokens))


def score(model: nn.Module, params: PyTree, encoder_input_tokens: Array | None, target_tokens: Array, *,
          target_mask: Array | None = None, encoded: Array | None = None,
          encoder_mask: Array | None = None) -> Array:
  """Teacher-forced log-likelihood of each target given its input.

  Args:
    model: a `Transformer` (its prompt, if any, is part of `params`).
    params: unboxed parameters.
    encoder_input_tokens: [batch, source] int32, 0-padded; or None when `encoded` is given.
    target_tokens: [batch, length] int32 (include the EOS to score it), 0-padded.
    target_mask: [batch, length] bool, the positions scored (default: up to the last non-zero token).
    encoded, encoder_mask: a precomputed encoder output [batch, source, embed] and its validity [batch, source]
      (see `decoding.encode`) instead of `encoder_input_tokens`.

  Returns:
    [batch] float32, the sum of log p(target token | input, earlier target tokens) over the scored positions.
  """
  encoded, encoder_mask = _encoded(model, params, encoder_input_tokens, encoded, encoder_mask)
  target_tokens = as_int32(target_tokens)
  if target_tokens.shape[0] != encoded.shape[0]:
    raise ValueError(f"{target_tokens.shape[0]} targets for {encoded.shape[0]} inputs; pass one target per input")
  return _score(model, params, encoded, encoder_mask, target_tokens,
                None if target_mask is None else jnp.asarray(target_mask, bool))


def rank_classify(model: nn.Module, params: PyTree, encoder_input_tokens: Array | None, candidate_tokens: Array, *,
                  encoded: Array | None = None, encoder_mask: Array | None = None) -> tuple[Array, Array]:
  """Picks, for each example, the candidate target with the highest log-likelihood.

  Args:
    model, params: as in `score`.
    encoder_input_tokens: [batch, source] int32; or None when `encoded` is given.
    candidate_tokens: [candidates, length] int32, each candidate with its EOS, 0-padded (`candidate_tokens()`).
    encoded, encoder_mask: a precomputed encoder output and its validity instead of `encoder_input_tokens`.

  Returns:
    (predictions [batch] int32, the best candidate's index, the first of equal ones;
     scores [batch, candidates] float32, every candidate's log-likelihood).
  """
  encoded, encoder_mask = _encoded(model, params, encoder_input_tokens, encoded, encoder_mask)
  candidate_tokens = np.asarray(candidate_tokens, np.int32)
  if candidate_tokens.ndim != 2 or candidate_tokens.shape[0] < 1:
    raise ValueError(f"candidate_tokens must be [candidates, length] with at least one candidate, got shape "
                     f"{tuple(candidate_tokens.shape)}; build it with candidate_tokens(vocabulary, labels)")
  return _rank(model, params, encoded, encoder_mask, candidate_tokens)


def candidate_tokens(vocabulary: seqio.Vocabulary, labels: Sequence[str],
                     max_length: int | None = None) -> np.ndarray:
  """Tokenizes class labels as targets are: each label's ids then EOS, 0-padded to one length.

  Args:
    vocabulary: the task's targets vocabulary.
    labels: the candidate strings, e.g. a task's class labels; distinct and non-empty.
    max_length: the targets length (TASK_FEATURE_LENGTHS['targets']); None pads to the longest label.

  Returns:
    [len(labels), length] int32.
  """
  labels = list(labels)
  if not labels:
    raise ValueError("no candidate labels; pass the task's class labels (tasks.get_class_labels) or your own")
  if len(set(labels)) != len(labels):
    raise ValueError(f"candidate labels {labels} repeat a label; pass each label once")
  ids = [list(vocabulary.encode(label)) + [vocabulary.eos_id] for label in labels]
  empty = [label for label, row in zip(labels, ids, strict=True) if len(row) == 1]
  if empty:
    raise ValueError(f"candidate labels {empty} tokenize to nothing; pass non-empty label strings")
  length = max(len(row) for row in ids)
  if max_length is not None:
    too_long = [label for label, row in zip(labels, ids, strict=True) if len(row) > max_length]
    if too_long:
      raise ValueError(f"candidate labels {too_long} take more than {max_length} target tokens with EOS; raise "
                       "TASK_FEATURE_LENGTHS['targets']")
    length = max_length
  out = np.zeros((len(labels), length), np.int32)
  for i, row in enumerate(ids):
    out[i, :len(row)] = row
  return out
