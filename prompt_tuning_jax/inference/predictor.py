"""The Python API for running trained prompts: a frozen model, a bank of named prompts, predict/score/classify.

  from prompt_tuning_jax import inference
  predictor = inference.Predictor.load("ckpts/t5_1_1_base/checkpoint_1100000",
                                       prompts={"rte": "rte_run/", "boolq": "boolq.npy"}, vocabulary=vocab)
  predictor.predict(["premise: ... hypothesis: ..."], prompt="rte")
  predictor.rank_classify(["..."], ["entailment", "not_entailment"], prompt="rte")

Every call serves a batch that may mix prompts (`prompt=` one name, or one name per input): one jitted encoder
pass through the bank (`bank.encode_mixed`) and one decode or teacher-forced pass (`decoding`, `scoring`).
Batches are padded to `batch_size` rows and the inputs to `max_input_length` tokens, so a run compiles once.

The three library calls most scripts need have one function each: `load_model` (frozen model + prompt),
`get_prompt` / `set_prompt` (the prompt in a parameter tree), `make_batch` (token ids -> tokens + mask).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning_jax import checkpoints as checkpoint_io
from prompt_tuning_jax import prompts
from prompt_tuning_jax.inference import decoding, scoring
from prompt_tuning_jax.inference.bank import PromptBank, load_prompt_source
from prompt_tuning_jax.model.config import T5Config
from prompt_tuning_jax.model.t5 import Transformer
from prompt_tuning_jax.training.checkpointing import PROMPT_PATH

PyTree = Any
PROMPT_REGEX = "encoder/prompt/.*"


def get_prompt(params: PyTree) -> np.ndarray | None:
  """The prompt [P, embed] of a parameter tree (at `encoder/prompt/prompt/prompt`), or None if it has none."""
  flat = traverse_util.flatten_dict(params)
  return None if PROMPT_PATH not in flat else np.asarray(flat[PROMPT_PATH])


def set_prompt(params: PyTree, prompt: Any | None) -> PyTree:
  """A copy of `params` with the prompt [P, embed] put at `encoder/prompt/prompt/prompt` (None: removed).

  The model that applies the result needs a prompt factory of length P (see `prompts.prefix_prompt_factory`).
  """
  flat = {path: value for path, value in traverse_util.flatten_dict(params).items()
          if path[:len(PROMPT_PATH) - 1] != PROMPT_PATH[:-1]}
  if prompt is not None:
    prompt = np.asarray(prompt, np.float32)
    embedding = flat.get(("token_embedder", "embedding"))
    if prompt.ndim != 2 or (embedding is not None and prompt.shape[1] != embedding.shape[1]):
      width = "?" if embedding is None else embedding.shape[1]
      raise ValueError(f"prompt has shape {prompt.shape}, the model needs [prompt_length, {width}]; use a prompt "
                       "trained for this model size")
    flat[PROMPT_PATH] = prompt
  return traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class Batch:
  """Encoder inputs made from token ids.

  Attributes:
    tokens: [batch, length] int32, 0-padded on the right.
    mask: [batch, length] bool, True on real tokens (T5's attention mask: `tokens > 0`).
    truncated: rows whose ids were longer than `length` and were cut (keeping the final EOS).
  """

  tokens: np.ndarray
  mask: np.ndarray
  truncated: tuple[int, ...]


def make_batch(token_ids: Sequence[Sequence[int]], length: int | None = None, eos_id: int | None = 1,
               batch_size: int | None = None) -> Batch:
  """Pads (and, past `length`, truncates) token id lists into a batch with its attention mask.

  Args:
    token_ids: one list of ids per example (without padding; 0 is T5's padding id and may not occur).
    length: the input length; None: the longest list. Longer lists are cut to `length`, and if they ended in
      `eos_id` the cut one ends in it too (seqio's truncation).
    eos_id: the end-of-sequence id kept by truncation (None: plain cut).
    batch_size: pad with all-0 rows to this many rows (fixed shapes, one compilation); None: len(token_ids).

  Returns:
    A `Batch` [batch_size, length].
  """
  rows = [list(map(int, ids)) for ids in token_ids]
  if any(0 in ids for ids in rows):
    raise ValueError("token ids contain 0, T5's padding id; pass the ids without padding")
  length = length if length is not None else max([len(ids) for ids in rows] or [1])
  if length < 1:
    raise ValueError(f"the input length must be positive, got {length}")
  batch_size = len(rows) if batch_size is None else batch_size
  if batch_size < len(rows):
    raise ValueError(f"{len(rows)} examples do not fit a batch of {batch_size}")
  tokens = np.zeros((batch_size, length), np.int32)
  truncated = []
  for i, ids in enumerate(rows):
    if len(ids) > length:
      truncated.append(i)
      ids = ids[:length - 1] + [eos_id] if eos_id is not None and ids[-1] == eos_id else ids[:length]
    tokens[i, :len(ids)] = ids
  return Batch(tokens, tokens > 0, tuple(truncated))


def model_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> Transformer:
  """MODEL built from gin files (found as the CLIs find them, e.g. 'models/t5_1_1_base.gin') and bindings.

  gin's config is cleared afterwards: the built model holds plain values and applies without it.
  """
  import gin  # the gin edge of this package: only this builder and the CLIs read gin

  from prompt_tuning_jax.training import cli

  gin.clear_config()
  try:
    cli.parse_gin(gin_files, bindings, [])
    return gin.get_configurable(Transformer)()
  finally:
    gin.clear_config()


def load_model(checkpoint: str | os.PathLike, model: Transformer | T5Config | str | None = None,
               prompt: str | os.PathLike | np.ndarray | None = None) -> tuple[Transformer, PyTree]:
  """Loads a frozen T5 1.1 (T5X legacy or orbax, Hugging Face) and optionally a prompt into its parameters.

  Args:
    checkpoint: the model's checkpoint directory (`checkpoints.load_params` reads every supported layout).
    model: the `Transformer` (e.g. built from gin), a `T5Config`, a gin file that defines MODEL (see
      `model_from_gin`), or None to take the config from the checkpoint's shapes (and config.json for Hugging
      Face). Its prompt factory, if any, is replaced.
    prompt: a prompt file / PEFT adapter dir / training run (`bank.load_prompt_source`) or an array [P, embed].

  Returns:
    (model, params): with a prompt, a model whose prompt factory has length P and params holding the prompt;
    without, the plain model.
  """
  checkpoint = os.fspath(checkpoint)
  loaded, inferred = checkpoint_io.load_params(checkpoint)
  if isinstance(model, str):
    model = model_from_gin([model])
  if model is None:
    model = Transformer(T5Config(**inferred))
  elif isinstance(model, T5Config):
    model = Transformer(model)
  checkpoint_io.check_config(model.config, inferred, checkpoint)
  bare = model.clone(prompt_factory=None)
  tokens = jnp.ones((1, 1), jnp.int32)
  expected = jax.eval_shape(lambda: bare.init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                              enable_dropout=False))["params"]
  params = checkpoint_io.merge_frozen(nn.meta.unbox(expected), loaded, checkpoint, skip_regex=PROMPT_REGEX)
  if prompt is None:
    return bare, params
  if not isinstance(prompt, np.ndarray):
    prompt = load_prompt_source(prompt, model.config.emb_dim)
  params = set_prompt(params, prompt)
  return model.clone(prompt_factory=prompts.prefix_prompt_factory(int(prompt.shape[0]))), params


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One decoded example: its text (if a vocabulary is known), tokens, log-likelihood score and prompt."""

  prediction: str | None
  tokens: tuple[int, ...]
  score: float
  prompt: str


class Predictor:
  """A frozen model and a `PromptBank`; predict, score and rank-classify batches that mix the bank's prompts.

  Args:
    model: the `Transformer`; its prompt factory, if any, is dropped (the bank supplies prompts).
    params: the frozen model's parameters; a prompt in them is ignored (put it in the bank).
    bank: the named prompts.
    vocabulary: encodes text inputs and decodes predictions (a seqio vocabulary); None: token ids only.
    batch_size: rows per jitted call (inputs are served in chunks of it, the last padded).
    max_input_length: input tokens per row; longer inputs are truncated (and counted in `truncated`). None:
      each chunk's longest input (a new compilation per new length).
  """

  def __init__(self, model: Transformer, params: PyTree, bank: PromptBank, vocabulary: Any | None = None, *,
               batch_size: int = 32, max_input_length: int | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_input_length is not None and max_input_length < 1:
      raise ValueError(f"max_input_length must be at least 1, got {max_input_length}")
    if bank.embed_dim != model.config.emb_dim:
      raise ValueError(f"the bank's prompts have width {bank.embed_dim}, model embed dim is "
                       f"{model.config.emb_dim}; use prompts trained for this model size")
    self.model = model.clone(prompt_factory=None)
    self.params = set_prompt(params, None)
    self.bank = bank
    self.vocabulary = vocabulary
    self.batch_size = batch_size
    self.max_input_length = max_input_length
    self.eos_id = 1 if vocabulary is None else int(vocabulary.eos_id)
    self.truncated = 0  # inputs cut to max_input_length so far

  @classmethod
  def load(cls, checkpoint: str | os.PathLike, prompts: Mapping[str, Any] | Sequence[tuple[str, Any]],
           model: Transformer | T5Config | str | None = None, vocabulary: Any | None = None,
           **kwargs: Any) -> Predictor:
    """A predictor from a model checkpoint and named prompts (paths `bank.load_prompt_source` reads, or arrays).

    `model` as in `load_model`; `kwargs` go to `Predictor` (batch_size, max_input_length).
    """
    model, params = load_model(checkpoint, model)
    pairs = list(prompts.items()) if isinstance(prompts, Mapping) else list(prompts)
    embed = model.config.emb_dim
    arrays = [(name, p if isinstance(p, np.ndarray) else load_prompt_source(p, embed)) for name, p in pairs]
    return cls(model, params, PromptBank.from_prompts(arrays, embed), vocabulary, **kwargs)

  # --- inputs -------------------------------------------------------------------------------------------------

  def _ids(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
    rows = []
    for x in inputs:
      if isinstance(x, str):
        if self.vocabulary is None:
          raise ValueError("text inputs need a vocabulary; pass vocabulary= to the Predictor, or token ids")
        if not x.strip():
          raise ValueError("an input is empty; give every example some text")
        rows.append(list(self.vocabulary.encode(x)) + [self.eos_id])
      else:
        rows.append([int(i) for i in x])
    return rows

  def prompt_ids(self, prompt: str | Sequence[str] | None, count: int) -> np.ndarray:
    """[count] int32 bank indices: one name for all, one name per example, or None for a bank of one."""
    if prompt is None:
      if len(self.bank) != 1:
        raise ValueError(f"the bank holds {len(self.bank)} prompts ({', '.join(self.bank.names)}); name one "
                         "with prompt=")
      return np.zeros(count, np.int32)
    names = [prompt] * count if isinstance(prompt, str) else list(prompt)
    if len(names) != count:
      raise ValueError(f"{len(names)} prompt names for {count} inputs; pass one name, or one per input")
    return np.array([self.bank.index(name) for name in names], np.int32)

  def _chunks(self, ids: list[list[int]], prompt_ids: np.ndarray):
    """Yields (encoded, encoder_mask, number of real rows) per chunk of `batch_size` rows (the last padded)."""
    for start in range(0, len(ids), self.batch_size):
      chunk = ids[start:start + self.batch_size]
      batch = make_batch(chunk, self.max_input_length, self.eos_id, self.batch_size)
      self.truncated += len(batch.truncated)
      chunk_prompts = np.zeros(self.batch_size, np.int32)
      chunk_prompts[:len(chunk)] = prompt_ids[start:start + len(chunk)]
      encoded, encoder_mask = self.bank.encode(self.model, self.params, chunk_prompts, batch.tokens)
      yield encoded, encoder_mask, len(chunk)

  # --- the three calls ----------------------------------------------------------------------------------------

  def predict(self, inputs: Sequence[str] | Sequence[Sequence[int]], prompt: str | Sequence[str] | None = None,
              *, max_decode_length: int = 64, **decode_options: Any) -> list[Prediction]:
    """Decodes every input with its prompt.

    Args:
      inputs: text (needs the vocabulary; EOS is appended) or token id lists (as given).
      prompt: a bank name for all inputs, one name per input, or None for a bank of one prompt.
      max_decode_length: target tokens to generate (EOS included).
      decode_options: `decoding.decode` options: method ('greedy', 'beam', 'sample'), num_beams, alpha,
        temperature, top_k, top_p, rng. Beam search returns its best beam.

    Returns:
      One `Prediction` per input, in order.
    """
    ids = self._ids(inputs)
    prompt_ids = self.prompt_ids(prompt, len(ids))
    results = []
    for encoded, encoder_mask, real in self._chunks(ids, prompt_ids):
      tokens, scores = decoding.decode(self.model, self.params, max_decode_length=max_decode_length,
                                       eos_id=self.eos_id, encoded=encoded, encoder_mask=encoder_mask,
                                       **decode_options)
      tokens, scores = np.asarray(tokens)[:real], np.asarray(scores)[:real]
      if tokens.ndim == 3:  # beams [batch, beams, length], best first
        tokens, scores = tokens[:, 0], scores[:, 0]
      for row, score in zip(tokens, scores, strict=True):
        row = tuple(int(t) for t in row if t > 0)
        i = len(results)
        text = None if self.vocabulary is None else self.vocabulary.decode(list(row))
        results.append(Prediction(text, row, float(score), self.bank.names[prompt_ids[i]]))
    return results

  def score(self, inputs: Sequence[str] | Sequence[Sequence[int]],
            targets: Sequence[str] | Sequence[Sequence[int]],
            prompt: str | Sequence[str] | None = None) -> np.ndarray:
    """[len(inputs)] float32: the log-likelihood of each target (text gets EOS appended) given its input."""
    ids, target_ids = self._ids(inputs), self._ids(targets)
    if len(ids) != len(target_ids):
      raise ValueError(f"{len(target_ids)} targets for {len(ids)} inputs; pass one target per input")
    prompt_ids = self.prompt_ids(prompt, len(ids))
    length = max(len(t) for t in target_ids)
    out = []
    for start, (encoded, encoder_mask, real) in zip(range(0, len(ids), self.batch_size),
                                                   self._chunks(ids, prompt_ids), strict=True):
      targets_batch = make_batch(target_ids[start:start + real], length, None, self.batch_size).tokens
      out.append(np.asarray(scoring.score(self.model, self.params, None, targets_batch, encoded=encoded,
                                          encoder_mask=encoder_mask))[:real])
    return np.concatenate(out)

  def rank_classify(self, inputs: Sequence[str] | Sequence[Sequence[int]], candidates: Sequence[str],
                    prompt: str | Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Picks each input's most likely candidate string (one teacher-forced pass over inputs x candidates).

    Returns:
      (choices [len(inputs)] int32, the first of equally likely candidates; scores [len(inputs), candidates]).
    """
    if self.vocabulary is None:
      raise ValueError("rank classification tokenizes the candidates: pass vocabulary= to the Predictor")
    candidate_ids = scoring.candidate_tokens(self.vocabulary, candidates)
    ids = self._ids(inputs)
    prompt_ids = self.prompt_ids(prompt, len(ids))
    choices, scores = [], []
    for encoded, encoder_mask, real in self._chunks(ids, prompt_ids):
      choice, score = scoring.rank_classify(self.model, self.params, None, candidate_ids, encoded=encoded,
                                            encoder_mask=encoder_mask)
      choices.append(np.asarray(choice)[:real])
      scores.append(np.asarray(score)[:real])
    return np.concatenate(choices), np.concatenate(scores)
