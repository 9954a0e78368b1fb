"""Splitting the parameter tree into trainable and frozen parts by a path regex."""

import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning_jax.training import train_state

PARAMS = {"encoder": {"prompt": {"prompt": {"prompt": np.ones((2, 4))}},
                      "encoder_norm": {"scale": np.ones(4)}},
          "decoder": {"logits_dense": {"kernel": np.ones((4, 8))}}}


def test_split_puts_prompt_in_trainable_and_everything_else_in_frozen():
  trainable, frozen = train_state.split_params(PARAMS, ".*/prompt/.*")
  assert list(trainable) == ["encoder"] and list(trainable["encoder"]) == ["prompt"]
  assert "prompt" not in frozen["encoder"] and "logits_dense" in frozen["decoder"]


def test_merge_inverts_split():
  params = {"encoder": {"prompt": {"prompt": {"prompt": np.arange(8.0).reshape(2, 4)}},
                        "encoder_norm": {"scale": np.arange(4.0) + 10}},
            "decoder": {"logits_dense": {"kernel": np.arange(32.0).reshape(4, 8) + 20}}}
  merged = train_state.merge_params(*train_state.split_params(params, ".*/prompt/.*"))
  flat, flat_merged = (traverse_util.flatten_dict(tree) for tree in (params, merged))
  assert flat_merged.keys() == flat.keys()
  for path, value in flat.items():
    np.testing.assert_array_equal(flat_merged[path], value, err_msg="/".join(path))


def test_regex_must_match_the_whole_path():
  trainable, _ = train_state.split_params(PARAMS, "decoder/.*")
  assert list(trainable) == ["decoder"]
  with pytest.raises(ValueError, match="matches no parameter"):
    train_state.split_params(PARAMS, "prompt")


def test_trainable_mask_marks_matching_leaves():
  mask = train_state.trainable_mask(PARAMS, ".*")
  assert all(np.ravel([mask["encoder"]["encoder_norm"]["scale"], mask["decoder"]["logits_dense"]["kernel"]]))
