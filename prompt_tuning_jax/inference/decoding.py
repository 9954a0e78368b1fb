"""Autoregressive decoding over the model's KV cache: greedy, beam search (T5X's length penalty), sampling.

Public API (stable; `inference.predictor`, `inference.scoring` and the eval call these):

  encode(model, params, encoder_input_tokens) -> (encoded [batch, source, embed], encoder_mask [batch, source])
  decode(model, params, encoder_input_tokens=None, *, max_decode_length, method="greedy", num_beams=4, alpha=0.6,
         temperature=1.0, top_k=0, top_p=1.0, rng=None, eos_id=1, encoded=None, encoder_mask=None)
      -> (tokens, scores)
      greedy, sample: tokens [batch, max_decode_length] int32, scores [batch] float32 (log-likelihood);
      beam: tokens [batch, num_beams, max_decode_length] best first, scores [batch, num_beams] float32
        (log-likelihood / brevity_penalty(alpha, length)).
      Every row is EOS-terminated and 0 after its EOS (a row without EOS ran to max_decode_length).
  greedy_decode(model, params, encoder_input_tokens, max_decode_length, eos_id=1) -> tokens [batch, length]
  greedy_decode_uncached(model, params, encoded, encoder_mask, *, max_decode_length, eos_id=1) -> (tokens, scores)
      the same without the KV cache (the whole decoder re-run every step): a reference for tests and benchmarks
  brevity_penalty(alpha, length) -> ((5 + length) / 6) ** alpha
  sequence_mask(tokens, eos_id=1) -> [..., length] bool: positions up to and including the first EOS
  check_decode_args(method, max_decode_length, num_beams, alpha, temperature, top_k, top_p): the one-line errors
  decoder_logits, init_cache, filter_logits: the building blocks (teacher-forced or one cached step; sampling)

The encoder (prompt included) runs once per batch: `decode` takes tokens, or `encoded` and `encoder_mask` made by
`encode` (or by a prompt bank, whose left-padded prompt rows are False in `encoder_mask`). The decoder then runs one
position per step over its 'cache' collection, the cross-attention keys and values projected once per sequence.

Beam search follows t5x's `decoding.beam_search`: each step keeps the 2 * num_beams best extensions of the live
beams; those ending in EOS join the finished set with score log p / brevity_penalty(alpha, length) (length counts
the generated tokens, EOS included), the best num_beams of the others stay live; the search stops once no live beam
can beat the worst finished one, or at max_decode_length. Two deliberate differences from t5x, neither changes the
best beam whenever a beam finishes: beams come best first (t5x returns them in ascending order, best last), and
when fewer than num_beams beams finish, the remaining slots hold the best live beams (which ran to
max_decode_length), scored with the same penalty and ranked after every finished beam (t5x fills them with
all-zero rows scored -1e7, and returns unpenalized log-probabilities when none finish). With 1 beam (t5x's eval
decoding) the live beam follows greedy's best non-EOS token and the result is the best, by penalized score, of
greedy's prefixes that EOS could end (EOS among the two best tokens): greedy's own sequence unless a shorter one
scores higher, which happens even without a length penalty.

Sampling divides the logits by `temperature`, then keeps the `top_k` most likely tokens and the top-p nucleus;
its scores are the model's log-likelihood of the sample (temperature 1, unfiltered; t5x reports the tempered one).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
METHODS = ("greedy", "beam", "sample")
# t5x's "effective negative infinity" for masked beams: finite, so sums of it stay ordered.
NEG_INF = -1.0e7
# Cache entries of the cross-attention: the same for every beam of an example, never reordered.
_PER_EXAMPLE_CACHE = ("projected_key", "projected_value")


def brevity_penalty(alpha: float, length: Array | int) -> Array:
  """T5X's length normalization of beam scores: ((5 + length) / 6) ** alpha (1 for alpha = 0)."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def sequence_mask(tokens: Array, eos_id: int = 1) -> Array:
  """[..., length] token ids -> [..., length] bool, True up to and including the first EOS (all if none)."""
  is_eos = (tokens == eos_id).astype(jnp.int32)
  eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos  # EOS strictly before each position
  return eos_before == 0


def as_int32(tokens: Any) -> Array:
  """Token ids as an int32 jax array; an int32 jax array (maybe global, multi-process) is returned untouched."""
  if isinstance(tokens, jax.Array) and tokens.dtype == jnp.int32:
    return tokens
  return jnp.asarray(tokens, jnp.int32)


@functools.partial(jax.jit, static_argnames=("model",))
def encode(model: nn.Module, params: PyTree, encoder_input_tokens: Array) -> tuple[Array, Array]:
  """Runs the encoder (with the model's prompt, if any) once.

  Args:
    model: a `Transformer`.
    params: its unboxed parameters.
    encoder_input_tokens: [batch, length] int32, 0-padded.

  Returns:
    (encoded [batch, prompt_length + length, embed], encoder_mask [batch, prompt_length + length] bool: the prompt
    positions and the non-padding tokens).
  """
  encoded = model.apply({"params": params}, encoder_input_tokens, enable_dropout=False, method=model.encode)
  batch, source = encoded.shape[:2]
  prompt_length = source - encoder_input_tokens.shape[1]
  encoder_mask = jnp.concatenate([jnp.ones((batch, prompt_length), bool), encoder_input_tokens > 0], axis=1)
  return encoded, encoder_mask


def decoder_logits(model: nn.Module, params: PyTree, encoded: Array, encoder_mask: Array,
                   decoder_input_tokens: Array, decoder_mask: Array | None = None, *, cache: PyTree | None = None,
                   max_decode_length: int | None = None) -> tuple[Array, PyTree | None]:
  """Decoder logits over a precomputed encoder output whose key validity is `encoder_mask`.

  Teacher-forced (cache None): `decoder_input_tokens` [batch, target], `decoder_mask` [batch, target] bool (the
  positions that attend and are attended to); returns (logits [batch, target, vocab], None).
  One cached step (cache given, from `init_cache`): `decoder_input_tokens` [batch, 1]; returns
  (logits [batch, 1, vocab], the updated cache).
  """
  # `Transformer.decode` reads encoder validity from its `encoder_input_tokens` (id > 0; positions beyond their
  # length count as prompt, always visible): a [batch, source] 0/1 array gives it exactly `encoder_mask`.
  mask_tokens = encoder_mask.astype(jnp.int32)
  if cache is None:
    target_valid = jnp.ones(decoder_input_tokens.shape, jnp.int32) if decoder_mask is None else decoder_mask
    logits = model.apply({"params": params}, encoded, mask_tokens, decoder_input_tokens,
                         target_valid.astype(jnp.int32), enable_dropout=False, method=model.decode)
    return logits, None
  logits, variables = model.apply({"params": params, "cache": cache}, encoded, mask_tokens, decoder_input_tokens,
                                  jnp.ones_like(decoder_input_tokens), enable_dropout=False, decode=True,
                                  max_decode_length=max_decode_length, mutable=["cache"], method=model.decode)
  return logits, variables["cache"]


def init_cache(model: nn.Module, params: PyTree, encoded: Array, encoder_mask: Array,
               max_decode_length: int) -> PyTree:
  """The decoder's 'cache' for `max_decode_length` steps (t5x's protocol: one call over all positions sizes it;
  the cross-attention keys and values of `encoded` are projected here, once)."""
  dummy = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)
  _, variables = model.apply({"params": params}, encoded, encoder_mask.astype(jnp.int32), dummy, dummy,
                             enable_dropout=False, decode=True, max_decode_length=max_decode_length,
                             mutable=["cache"], method=model.decode)
  return variables["cache"]


def check_decode_args(method: str, max_decode_length: int, num_beams: int, alpha: float, temperature: float,
                      top_k: int, top_p: float) -> None:
  """Raises a one-line ValueError naming the fix for a bad decoding setting (`decode` calls it first)."""
  if method not in METHODS:
    raise ValueError(f"decoding method {method!r} is unknown; use one of {', '.join(METHODS)}")
  if not isinstance(max_decode_length, int) or max_decode_length < 1:
    raise ValueError(f"max_decode_length must be a positive int, got {max_decode_length!r}; pass the number of "
                     "target tokens to generate (EOS included)")
  if method == "beam":
    if not isinstance(num_beams, int) or num_beams < 1:
      raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}; use 1 for t5x's eval decoding")
    if alpha < 0:
      raise ValueError(f"alpha (length penalty) must be >= 0, got {alpha}; use 0.6 (t5x) or 0 (no penalty)")
  if method == "sample":
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0 for sampling, got {temperature}; use method='greedy' for "
                       "temperature 0")
    if not isinstance(top_k, int) or top_k < 0:
      raise ValueError(f"top_k must be an int >= 0 (0: no top-k filtering), got {top_k!r}")
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}; use 1.0 to sample from the whole distribution")


def decode(model: nn.Module, params: PyTree, encoder_input_tokens: Array | None = None, *, max_decode_length: int,
           method: str = "greedy", num_beams: int = 4, alpha: float = 0.6, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, rng: Array | int | None = None, eos_id: int = 1,
           encoded: Array | None = None, encoder_mask: Array | None = None) -> tuple[Array, Array]:
  """Decodes a batch: greedy, beam search or sampling, jit-compiled over the KV cache.

  Args:
    model: a `Transformer` (its prompt, if any, is part of `params`).
    params: unboxed parameters.
    encoder_input_tokens: [batch, length] int32, 0-padded; or None when `encoded` is given.
    max_decode_length: decoder positions to generate (EOS included).
    method: 'greedy', 'beam' or 'sample'.
    num_beams: beams kept (beam search); also the number of sequences returned per example.
    alpha: T5X's length penalty exponent (beam search); 0 ranks by raw log-likelihood.
    temperature: logits are divided by it before sampling (> 0).
    top_k: sample among the k most likely tokens only (0: all).
    top_p: sample from the smallest set of most likely tokens whose probability reaches top_p (1: all).
    rng: a `jax.random.PRNGKey` or an int seed (sampling); a sample depends on it and on the example's row.
    eos_id: end-of-sequence id; a row stops at it and is 0 afterwards.
    encoded: [batch, source, embed] encoder output (from `encode` or a prompt bank) instead of tokens.
    encoder_mask: [batch, source] bool, the valid encoder positions of `encoded` (required with it).

  Returns:
    (tokens, scores): see the module docstring.
  """
  check_decode_args(method, max_decode_length, num_beams, alpha, temperature, top_k, top_p)
  if encoded is None:
    if encoder_input_tokens is None:
      raise ValueError("decode needs encoder_input_tokens, or encoded with encoder_mask")
    encoded, encoder_mask = encode(model, params, as_int32(encoder_input_tokens))
  elif encoder_mask is None:
    raise ValueError("encoded was given without encoder_mask; pass the [batch, source] validity from encode()")
  if method == "beam":
    return _beam_search(model, params, encoded, encoder_mask, max_decode_length=max_decode_length,
                        num_beams=num_beams, alpha=float(alpha), eos_id=eos_id)
  if method == "sample":
    if rng is None:
      raise ValueError("sampling needs a seed: pass rng=jax.random.PRNGKey(seed) or an int")
    key = jax.random.PRNGKey(int(rng)) if isinstance(rng, numbers.Integral) else rng
    return _sample(model, params, encoded, encoder_mask, key, max_decode_length=max_decode_length, eos_id=eos_id,
                   temperature=float(temperature), top_k=top_k, top_p=float(top_p))
  return _sample(model, params, encoded, encoder_mask, jax.random.PRNGKey(0), max_decode_length=max_decode_length,
                 eos_id=eos_id, temperature=None, top_k=0, top_p=1.0)


def greedy_decode(model: nn.Module, params: PyTree, encoder_input_tokens: Array, max_decode_length: int,
                  eos_id: int = 1) -> Array:
  """Greedy tokens [batch, max_decode_length] (EOS included, 0 after it); `decode(method='greedy')` without scores."""
  return decode(model, params, encoder_input_tokens, max_decode_length=max_decode_length, eos_id=eos_id)[0]


def decode_examples(model: nn.Module, params: PyTree, examples: Sequence[Mapping[str, Any]], input_length: int,
                    max_decode_length: int, vocabulary: Any) -> list[str]:
  """Greedy predictions, as text, for task examples (dicts with 'inputs' token ids ending in EOS, e.g. a seqio
  split's numpy examples); `vocabulary` is a `seqio.Vocabulary`."""
  tokens = np.zeros((len(examples), input_length), np.int32)  # [batch, input_length], 0-padded
  for row, example in enumerate(examples):
    tokens[row, :len(example["inputs"])] = example["inputs"]
  predicted = greedy_decode(model, params, jnp.asarray(tokens), max_decode_length, vocabulary.eos_id)
  return [vocabulary.decode([int(t) for t in row]) for row in np.asarray(predicted)]


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "eos_id"))
def greedy_decode_uncached(model: nn.Module, params: PyTree, encoded: Array, encoder_mask: Array, *,
                           max_decode_length: int, eos_id: int = 1) -> tuple[Array, Array]:
  """Greedy decoding without the KV cache, the reference for tests and benchmarks: every step re-runs the whole
  teacher-forced decoder over the tokens so far (causal attention: later positions do not change earlier ones).

  Returns:
    As `decode(method='greedy')`: tokens [batch, max_decode_length], log-likelihoods [batch].
  """
  batch = encoded.shape[0]

  def step(i, state):
    tokens, done, log_likelihood = state
    decoder_input_tokens = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
    logits, _ = decoder_logits(model, params, encoded, encoder_mask, decoder_input_tokens)
    log_probs = jax.nn.log_softmax(logits[:, i])  # [batch, vocab]
    token = jnp.where(done, 0, jnp.argmax(log_probs, axis=-1).astype(jnp.int32))
    token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    return (tokens.at[:, i].set(token), jnp.logical_or(done, token == eos_id),
            log_likelihood + jnp.where(done, 0.0, token_log_prob))

  state = (jnp.zeros((batch, max_decode_length), jnp.int32), jnp.zeros((batch,), bool),
           jnp.zeros((batch,), jnp.float32))
  tokens, _, log_likelihood = jax.lax.fori_loop(0, max_decode_length, step, state)
  return tokens, log_likelihood


def filter_logits(logits: Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Array:
  """The sampling distribution's logits: divided by `temperature`, then all but the `top_k` largest and all
  outside the top-p nucleus set to NEG_INF (the most likely token always stays). [..., vocab] -> [..., vocab]."""
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth_largest = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth_largest, NEG_INF, logits)
  if top_p < 1.0:
    sorted_logits = -jnp.sort(-logits, axis=-1)  # descending
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # of the strictly more likely tokens
    num_kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1
    cutoff = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return logits


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "eos_id", "temperature", "top_k",
                                             "top_p"))
def _sample(model: nn.Module, params: PyTree, encoded: Array, encoder_mask: Array, rng: Array, *,
            max_decode_length: int, eos_id: int, temperature: float | None, top_k: int,
            top_p: float) -> tuple[Array, Array]:
  """Greedy (temperature None) or sampled tokens [batch, length] and their log-likelihood [batch]."""
  batch = encoded.shape[0]
  cache = init_cache(model, params, encoded, encoder_mask, max_decode_length)

  def not_done(state):
    i, _, _, done, _, _ = state
    return jnp.logical_and(i < max_decode_length, jnp.logical_not(jnp.all(done)))

  def step(state):
    i, cache, previous, done, tokens, log_likelihood = state
    logits, cache = decoder_logits(model, params, encoded, encoder_mask, previous[:, None], cache=cache,
                                   max_decode_length=max_decode_length)
    logits = logits[:, 0]  # [batch, vocab]
    if temperature is None:
      token = jnp.argmax(logits, axis=-1)
    else:
      token = jax.random.categorical(jax.random.fold_in(rng, i), filter_logits(logits, temperature, top_k, top_p))
    token = jnp.where(done, 0, token.astype(jnp.int32))
    token_log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
    log_likelihood = log_likelihood + jnp.where(done, 0.0, token_log_prob)
    tokens = tokens.at[:, i].set(token)
    return i + 1, cache, token, jnp.logical_or(done, token == eos_id), tokens, log_likelihood

  state = (jnp.asarray(0), cache, jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool),
           jnp.zeros((batch, max_decode_length), jnp.int32), jnp.zeros((batch,), jnp.float32))
  _, _, _, _, tokens, log_likelihood = jax.lax.while_loop(not_done, step, state)
  return tokens, log_likelihood


def _gather_beams(x: Array, indices: Array) -> Array:
  """x [batch, old_beams, ...], indices [batch, new_beams] -> [batch, new_beams, ...]."""
  return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def _reorder_cache(cache: PyTree, indices: Array) -> PyTree:
  """Reorders the self-attention cache rows [batch * beams, ...] by beam `indices` [batch, beams]."""
  batch, beams = indices.shape

  def gather(path, x):
    if x.ndim == 0 or getattr(path[-1], "key", None) in _PER_EXAMPLE_CACHE:
      return x  # the cache index, and projections identical across an example's beams
    rows = _gather_beams(x.reshape(batch, -1, *x.shape[1:]), indices)
    return rows.reshape(batch * beams, *x.shape[1:])

  return jax.tree_util.tree_map_with_path(gather, cache)


def _top_k_by(score: Array, k: int, *arrays: Array) -> tuple[Array, ...]:
  """The k entries with the highest `score` [batch, n] (best first) of `score` and of each [batch, n, ...] array."""
  top_scores, indices = jax.lax.top_k(score, k)
  return (top_scores, indices, *(_gather_beams(a, indices) for a in arrays))


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "num_beams", "alpha", "eos_id"))
def _beam_search(model: nn.Module, params: PyTree, encoded: Array, encoder_mask: Array, *, max_decode_length: int,
                 num_beams: int, alpha: float, eos_id: int) -> tuple[Array, Array]:
  """Beam search with t5x's semantics (see the module docstring): tokens [batch, beams, length] best first and
  scores [batch, beams]."""
  batch, k, length = encoded.shape[0], num_beams, max_decode_length
  # The cross-attention projections are made once per example, then copied to its beams.
  cache = jax.tree_util.tree_map(lambda x: x if x.ndim == 0 else jnp.repeat(x, k, axis=0),
                                 init_cache(model, params, encoded, encoder_mask, length))
  beam_encoded, beam_mask = jnp.repeat(encoded, k, axis=0), jnp.repeat(encoder_mask, k, axis=0)
  max_penalty = brevity_penalty(alpha, length)  # the largest any sequence can get (alpha >= 0)

  def not_done(state):
    i, _, live_log_probs, _, finished_scores, finished = state[:6]
    # A live beam's score can only fall: it is at most its log-probability over the largest penalty.
    best_live = live_log_probs[:, 0] / max_penalty
    worst_finished = jnp.where(jnp.all(finished, axis=1), finished_scores[:, -1], NEG_INF)
    return jnp.logical_and(i < length, jnp.logical_not(jnp.all(worst_finished > best_live)))

  def step(state):
    i, live_seqs, live_log_probs, finished_seqs, finished_scores, finished, cache = state
    previous = jnp.where(i == 0, 0, live_seqs[:, :, jnp.maximum(i - 1, 0)])  # T5 starts from id 0
    logits, cache = decoder_logits(model, params, beam_encoded, beam_mask, previous.reshape(batch * k, 1),
                                   cache=cache, max_decode_length=length)
    log_probs = jax.nn.log_softmax(logits[:, 0]).reshape(batch, k, -1) + live_log_probs[:, :, None]
    vocab = log_probs.shape[-1]
    # The 2k best extensions: even if k of them end in EOS, k others can stay live.
    candidate_log_probs, flat_index = jax.lax.top_k(log_probs.reshape(batch, k * vocab), 2 * k)
    candidate_beam, candidate_token = flat_index // vocab, flat_index % vocab
    candidates = _gather_beams(live_seqs, candidate_beam).at[:, :, i].set(candidate_token)
    ends = candidate_token == eos_id  # [batch, 2k]

    live_log_probs, keep, live_seqs, source_beam = _top_k_by(
        candidate_log_probs + jnp.where(ends, NEG_INF, 0.0), k, candidates, candidate_beam)
    del keep
    cache = _reorder_cache(cache, source_beam)

    new_scores = candidate_log_probs / brevity_penalty(alpha, i + 1) + jnp.where(ends, 0.0, NEG_INF)
    finished_scores, _, finished_seqs, finished = _top_k_by(
        jnp.concatenate([finished_scores, new_scores], axis=1), k,
        jnp.concatenate([finished_seqs, candidates], axis=1), jnp.concatenate([finished, ends], axis=1))
    return i + 1, live_seqs, live_log_probs, finished_seqs, finished_scores, finished, cache

  live_log_probs = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  state = (jnp.asarray(0), jnp.zeros((batch, k, length), jnp.int32), live_log_probs,
           jnp.zeros((batch, k, length), jnp.int32), jnp.full((batch, k), NEG_INF, jnp.float32),
           jnp.zeros((batch, k), bool), cache)
  _, live_seqs, live_log_probs, finished_seqs, finished_scores, finished, _ = jax.lax.while_loop(
      not_done, step, state)
  # Slots no finished beam filled take the best live beams (which ran to max_decode_length), in order.
  num_finished = jnp.sum(finished, axis=1, keepdims=True)  # finished slots come first: [batch, 1]
  live_slot = jnp.clip(jnp.arange(k)[None, :] - num_finished, 0, k - 1)
  from_live = jnp.logical_not(finished)
  tokens = jnp.where(from_live[:, :, None], _gather_beams(live_seqs, live_slot), finished_seqs)
  live_scores = jnp.take_along_axis(live_log_probs, live_slot, axis=1) / max_penalty
  return tokens, jnp.where(from_live, live_scores, finished_scores)
