"""Interpreting a learned prompt by its nearest vocabulary embeddings (Lester et al. 2021, section 7).

Each prompt row is compared by cosine similarity with every row of the model's (frozen) input embedding table;
the closest tokens show what the prompt has drifted towards, e.g. class labels or task words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Decoder(Protocol):
  """Anything with `decode(ids) -> str` (seqio vocabularies, sentencepiece processors)."""

  def decode(self, ids: Sequence[int]) -> str: ...


def nearest_tokens(prompt: np.ndarray, embedding: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
  """The `k` vocabulary ids whose embeddings have the highest cosine similarity to each prompt row.

  Args:
    prompt: [prompt_length, embed].
    embedding: the model's token table [vocab, embed].
    k: neighbours per row.

  Returns:
    ids [prompt_length, k] int32 and similarities [prompt_length, k] float32, most similar first.
  """
  prompt = np.asarray(prompt, np.float32)
  embedding = np.asarray(embedding, np.float32)
  if prompt.ndim != 2 or embedding.ndim != 2 or prompt.shape[1] != embedding.shape[1]:
    raise ValueError(f"prompt {prompt.shape} and embedding {embedding.shape} must be [P, d] and [vocab, d] with the "
                     f"same d; use the embedding of the model the prompt was trained for")
  if not 0 < k <= embedding.shape[0]:
    raise ValueError(f"k must be in [1, {embedding.shape[0]}] (the vocabulary size), got {k}")
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  similarity = unit(prompt) @ unit(embedding).T  # [P, vocab]
  ids = np.argsort(-similarity, axis=-1, kind="stable")[:, :k]
  return ids.astype(np.int32), np.take_along_axis(similarity, ids, axis=-1).astype(np.float32)


def describe_prompt(prompt: np.ndarray, embedding: np.ndarray, vocabulary: Decoder, k: int = 5) -> list[str]:
  """One line per prompt row: its nearest tokens as text with their cosine similarities."""
  ids, sims = nearest_tokens(prompt, embedding, k)
  lines = []
  for row, (row_ids, row_sims) in enumerate(zip(ids, sims, strict=True)):
    tokens = ", ".join(f"{vocabulary.decode([int(i)])!r} {s:.2f}" for i, s in zip(row_ids, row_sims, strict=True))
    lines.append(f"prompt[{row:3d}]: {tokens}")
  return lines
