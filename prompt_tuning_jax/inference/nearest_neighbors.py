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


def shared_nearest_neighbors(ids: np.ndarray) -> tuple[int, dict[int, list[int]]]:
  """The paper's first observation: prompt rows whose nearest token is also another row's nearest.

  Args:
    ids: [prompt_length, k] from `nearest_tokens`; column 0 is each row's nearest token.

  Returns:
    (number of rows that share their nearest token with at least one other row, {token id: [rows]} for every
    token that is the nearest of two or more rows).
  """
  rows_of: dict[int, list[int]] = {}
  for row, token in enumerate(ids[:, 0]):
    rows_of.setdefault(int(token), []).append(row)
  shared = {token: rows for token, rows in rows_of.items() if len(rows) > 1}
  return sum(len(rows) for rows in shared.values()), shared


class Encoder(Protocol):
  """Anything with `encode(text) -> ids` (seqio vocabularies, sentencepiece processors)."""

  def encode(self, s: str) -> Sequence[int]: ...


def label_neighbors(ids: np.ndarray, vocabulary: Encoder, labels: Sequence[str]) -> dict[str, list[int]]:
  """The paper's second observation: which class labels appear among each row's nearest tokens.

  A label appears in a row when one of the label's sub-tokens is among the row's k nearest tokens.

  Returns:
    {label: [rows whose neighbours include it]}, for every label (an empty list when none).
  """
  neighbours = [set(int(i) for i in row) for row in ids]
  found = {}
  for label in labels:
    label_ids = {int(i) for i in vocabulary.encode(label)}
    found[label] = [row for row, near in enumerate(neighbours) if near & label_ids]
  return found


def plot_similarities(path: str, ids: np.ndarray, sims: np.ndarray, vocabulary: Decoder,
                      title: str = "prompt rows' nearest vocabulary tokens") -> str:
  """Writes a heatmap PNG: one row per prompt row, its k nearest tokens (annotated) by cosine similarity."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  rows, k = sims.shape
  fig, ax = plt.subplots(figsize=(1.1 * k + 2.5, 0.32 * rows + 1.5))
  image = ax.imshow(sims, cmap="viridis", aspect="auto", vmin=min(0.0, float(sims.min())), vmax=1.0)
  for r in range(rows):
    for c in range(k):
      ax.text(c, r, vocabulary.decode([int(ids[r, c])]) or "''", ha="center", va="center", fontsize=7,
              color="white" if sims[r, c] < 0.6 else "black")
  ax.set(xlabel="neighbour rank", ylabel="prompt row", title=title, xticks=range(k), yticks=range(rows),
         xticklabels=[str(i + 1) for i in range(k)])
  fig.colorbar(image, ax=ax, label="cosine similarity")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
