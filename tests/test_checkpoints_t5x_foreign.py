"""Checkpoints written by t5x itself, read by our loaders (and ours read by t5x, when it is installed).

tests/fixtures/t5x/ was made by scripts/make_t5x_fixtures.py with t5x's `Checkpointer` (legacy msgpack + zarr) and
`OrbaxCheckpointManagerInterface` (orbax, OCDBT) from a tiny T5 1.1 whose parameters are in params.npz.
"""

import functools
import importlib.util
import os

import numpy as np
import pytest
from _optional import needs
from flax import traverse_util

from prompt_tuning_jax import prompts
from prompt_tuning_jax.checkpoints import (
  check_config,
  load_params,
  load_t5x_legacy,
  load_t5x_orbax,
  save_t5x_legacy,
)
from prompt_tuning_jax.model import Transformer
from prompt_tuning_jax.training import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "t5x")
LEGACY, ORBAX = (os.path.join(FIXTURES, layout, "checkpoint_3") for layout in ("legacy", "orbax"))


def _fixture_script():
  spec = importlib.util.spec_from_file_location("make_t5x_fixtures", os.path.join(ROOT, "scripts",
                                                                                  "make_t5x_fixtures.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


FIXTURE_CONFIG = _fixture_script().FIXTURE_CONFIG


def _expected() -> dict[str, np.ndarray]:
  with np.load(os.path.join(FIXTURES, "params.npz"), allow_pickle=False) as data:
    return dict(data)


def _assert_equal_to_fixture(params) -> None:
  flat, expected = traverse_util.flatten_dict(params, sep="/"), _expected()
  assert sorted(flat) == sorted(expected)
  for path, value in expected.items():
    assert flat[path].dtype == np.float32, path
    np.testing.assert_array_equal(flat[path], value, err_msg=path)


def test_t5x_legacy_checkpoint_loads_every_array_exactly():
  _assert_equal_to_fixture(load_t5x_legacy(LEGACY))


def test_t5x_orbax_checkpoint_loads_every_array_exactly():
  _assert_equal_to_fixture(load_t5x_orbax(ORBAX))


@pytest.mark.parametrize("path", [LEGACY, ORBAX], ids=["legacy", "orbax"])
def test_t5x_checkpoints_are_detected_and_their_config_inferred(path):
  params, inferred = load_params(path)
  _assert_equal_to_fixture(params)
  check_config(FIXTURE_CONFIG, inferred, path)  # raises on any mismatch


def test_t5x_checkpoint_is_a_valid_initial_checkpoint_for_prompt_tuning():
  prompt_length = 3
  model = Transformer(FIXTURE_CONFIG, prompt_factory=functools.partial(prompts.PrefixPrompt, length=prompt_length,
                                                                       init=prompts.from_sampled_vocab()))
  params = runs.initial_params(model, {"inputs": 6, "targets": 4}, LEGACY, ".*/prompt/.*", seed=0)
  prompt = np.asarray(params["encoder"].pop("prompt")["prompt"]["prompt"])
  _assert_equal_to_fixture(params)
  # Sampled-vocabulary init: every prompt row is a row of the checkpoint's embedding.
  embedding = _expected()["token_embedder/embedding"]
  assert all(np.any(np.all(embedding == row, axis=1)) for row in prompt)


@needs("t5x")
def test_our_legacy_checkpoint_is_read_by_t5x(tmp_path):
  from t5x import checkpoints as t5x_checkpoints

  params = traverse_util.unflatten_dict(_expected(), sep="/")
  directory = save_t5x_legacy(params, str(tmp_path), step=5)
  restored = t5x_checkpoints.load_t5x_checkpoint(str(directory))
  _assert_equal_to_fixture(restored["target"])


@needs("t5x")
def test_t5x_t5_1_1_network_has_our_parameter_names_and_gives_our_logits():
  """t5x's own T5 1.1 (`t5x.examples.t5.network`, the model t5x's T5 1.1 checkpoints come from) initialized by
  t5x: the same parameter paths and shapes as ours (so the fixtures, built from our tree, have t5x's names), and
  our model run on t5x's parameters gives t5x's logits."""
  import jax
  import jax.numpy as jnp
  from flax.core import meta
  from t5x.examples.t5 import network

  from prompt_tuning_jax.model import T5Config

  theirs = network.Transformer(network.T5Config(
      vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2, num_decoder_layers=3,
      mlp_activations=("gelu", "linear"), dropout_rate=0.0, logits_via_embedding=False))
  ours = Transformer(T5Config(vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2,
                              num_decoder_layers=3))  # t5x's network fixes 32 buckets, distance 128: our defaults
  rng = np.random.RandomState(0)
  inputs = jnp.asarray(np.concatenate([rng.randint(2, 40, (3, 9)), np.zeros((3, 3))], 1), jnp.int32)  # padded
  targets = jnp.asarray(rng.randint(2, 40, (3, 7)), jnp.int32)
  decoder_inputs = jnp.concatenate([jnp.zeros((3, 1), jnp.int32), targets[:, :-1]], axis=1)
  variables = theirs.init(jax.random.PRNGKey(1), inputs, decoder_inputs, targets, enable_dropout=False)
  params = meta.unbox(variables["params"])
  t5x_flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, params), sep="/")
  our_boxed = ours.init(jax.random.PRNGKey(0), inputs, decoder_inputs, targets, enable_dropout=False)["params"]
  our_flat = traverse_util.flatten_dict(meta.unbox(our_boxed), sep="/")
  assert {k: v.shape for k, v in t5x_flat.items()} == {k: v.shape for k, v in our_flat.items()}
  expected = theirs.apply({"params": params}, inputs, decoder_inputs, targets, enable_dropout=False)
  got = ours.apply({"params": params}, inputs, decoder_inputs, targets, enable_dropout=False)
  scale = float(jnp.max(jnp.abs(expected)))
  assert scale > 1e-2  # not a degenerate all-zero comparison
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5 * scale, rtol=1e-5)
