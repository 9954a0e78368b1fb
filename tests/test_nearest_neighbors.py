"""Nearest-vocabulary interpretation of a prompt (cosine similarity to the input embeddings)."""

import numpy as np
import pytest

from prompt_tuning_jax.inference.nearest_neighbors import describe_prompt, nearest_tokens


class LetterVocabulary:
  def decode(self, ids):
    return "".join(chr(ord("a") + i) for i in ids)


def test_a_prompt_row_that_is_a_scaled_token_embedding_finds_that_token_first():
  embedding = np.random.RandomState(0).normal(size=(26, 8)).astype(np.float32)
  prompt = np.stack([3.0 * embedding[4], 0.5 * embedding[17] + 0.01 * embedding[2]])
  ids, sims = nearest_tokens(prompt, embedding, k=3)
  assert ids.shape == (2, 3) and sims.shape == (2, 3)
  assert ids[0, 0] == 4 and ids[1, 0] == 17
  np.testing.assert_allclose(sims[0, 0], 1.0, rtol=1e-6)  # cosine ignores the scale
  assert np.all(np.diff(sims, axis=1) <= 0)  # most similar first


def test_similarities_are_cosines():
  embedding = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
  ids, sims = nearest_tokens(np.array([[2.0, 0.0]], np.float32), embedding, k=3)
  np.testing.assert_array_equal(ids[0], [0, 2, 1])
  np.testing.assert_allclose(sims[0], [1.0, np.sqrt(0.5), 0.0], atol=1e-6)


def test_describe_prompt_prints_one_line_per_row_with_token_text():
  embedding = np.eye(4, dtype=np.float32)
  lines = describe_prompt(np.eye(4, dtype=np.float32)[[2, 0]], embedding, LetterVocabulary(), k=2)
  assert len(lines) == 2
  assert lines[0].startswith("prompt[  0]: 'c' 1.00")
  assert lines[1].startswith("prompt[  1]: 'a' 1.00")


def test_mismatched_widths_are_refused():
  with pytest.raises(ValueError, match="same d"):
    nearest_tokens(np.zeros((3, 5)), np.zeros((10, 4)))
