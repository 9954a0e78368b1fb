"""The prompt bank: a mixed batch of tasks gets exactly what each example gets alone with its own prompt."""

import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning_jax import checkpoints as checkpoint_io
from prompt_tuning_jax import prompts
from prompt_tuning_jax.inference import bank as bank_lib
from prompt_tuning_jax.inference import decoding
from prompt_tuning_jax.model import config_for_size
from prompt_tuning_jax.model.t5 import Transformer
from prompt_tuning_jax.training import cli

LENGTHS = (1, 5, 20)
INPUT_LENGTH, TARGET_LENGTH, DECODE_LENGTH = 7, 5, 6


@pytest.fixture(scope="module")
def setup():
  """(bare model, its params, {length: prompt [length, embed]}, inputs [6, T], decoder inputs/targets)."""
  config = config_for_size("tiny")
  model = Transformer(config)
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, config.vocab_size, (6, INPUT_LENGTH)).astype(np.int32)
  tokens[1, 4:] = 0  # padding inside the mixed batch
  tokens[4, 2:] = 0
  targets = rng.integers(2, config.vocab_size, (6, TARGET_LENGTH)).astype(np.int32)
  decoder_inputs = np.concatenate([np.zeros((6, 1), np.int32), targets[:, :-1]], axis=1)
  params = jax.jit(functools.partial(model.init, enable_dropout=False))(
      jax.random.PRNGKey(0), tokens, decoder_inputs, targets)["params"]
  prompt_by_length = {n: rng.normal(0, 1, (n, config.emb_dim)).astype(np.float32) for n in LENGTHS}
  return model, params, prompt_by_length, tokens, decoder_inputs, targets


@functools.partial(jax.jit, static_argnames="model")
def _logits(model, params, tokens, decoder_inputs, targets, prompt=None, prompt_mask=None):
  return model.apply({"params": params}, tokens, decoder_inputs, targets, enable_dropout=False, prompt=prompt,
                     prompt_mask=prompt_mask)


def _single_prompt_model(config, length):
  return Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=length))


def _with_prompt(params, prompt):
  return {**params, "encoder": {**params["encoder"], "prompt": {"prompt": {"prompt": jnp.asarray(prompt)}}}}


def test_mixed_batch_equals_each_example_alone_with_its_own_prompt(setup):
  model, params, prompt_by_length, tokens, decoder_inputs, targets = setup
  bank = bank_lib.PromptBank.from_prompts([(f"p{n}", prompt_by_length[n]) for n in LENGTHS])
  ids = np.array([0, 1, 2, 2, 0, 1])  # every length, twice, interleaved
  prompt, mask = bank.rows(ids)
  mixed = _logits(model, params, tokens, decoder_inputs, targets, prompt, mask)
  encoded, encoder_mask = bank.encode(model, params, ids, tokens)
  mixed_tokens, _ = decoding.decode(model, params, max_decode_length=DECODE_LENGTH, encoded=encoded,
                                    encoder_mask=encoder_mask)
  for row, i in enumerate(ids):
    length = LENGTHS[i]
    alone_model = _single_prompt_model(model.config, length)
    alone_params = _with_prompt(params, prompt_by_length[length])
    alone = _logits(alone_model, alone_params, tokens[row:row + 1], decoder_inputs[row:row + 1],
                    targets[row:row + 1])
    # float32 to 1e-6 of the logits' scale (~3 here): XLA rounds a few ulps differently for another batch size
    # alone (batch 1 vs 6 of the same rows, no bank, differ by ~1e-6 too), so that is the floor, not the padding.
    scale = float(np.abs(alone).max())
    np.testing.assert_allclose(mixed[row], alone[0], atol=1e-6 * scale, rtol=0)
    alone_tokens, _ = decoding.decode(alone_model, alone_params, tokens[row:row + 1],
                                      max_decode_length=DECODE_LENGTH)
    np.testing.assert_array_equal(mixed_tokens[row], alone_tokens[0])


def test_bank_of_one_task_equals_the_single_prompt_path(setup):
  model, params, prompt_by_length, tokens, decoder_inputs, targets = setup
  bank = bank_lib.PromptBank.from_prompts({"only": prompt_by_length[5]})
  prompt, mask = bank.rows(np.zeros(len(tokens), np.int32))
  banked = _logits(model, params, tokens, decoder_inputs, targets, prompt, mask)
  single = _logits(_single_prompt_model(model.config, 5), _with_prompt(params, prompt_by_length[5]), tokens,
                   decoder_inputs, targets)
  np.testing.assert_array_equal(banked, single)


def test_pad_rows_are_left_and_masked():
  bank = bank_lib.PromptBank.from_prompts([("a", np.ones((1, 4))), ("b", 2 * np.ones((3, 4)))])
  assert bank.prompts.shape == (2, 3, 4)
  np.testing.assert_array_equal(bank.mask, [[False, False, True], [True, True, True]])
  np.testing.assert_array_equal(bank.prompts[0, :2], 0.0)
  np.testing.assert_array_equal(bank.prompt("a"), np.ones((1, 4)))


def test_two_prompts_of_one_name_are_refused():
  with pytest.raises(ValueError, match="two prompts named 'a'; give each prompt its own name"):
    bank_lib.PromptBank.from_prompts([("a", np.ones((1, 4))), ("a", np.ones((2, 4)))])


def test_prompt_width_that_does_not_fit_the_model_is_refused():
  with pytest.raises(ValueError, match="has width 4, model embed dim is 32"):
    bank_lib.PromptBank.from_prompts({"a": np.ones((2, 4))}, embed_dim=32)


def test_unknown_prompt_name_lists_the_bank():
  bank = bank_lib.PromptBank.from_prompts({"a": np.ones((1, 4))})
  with pytest.raises(ValueError, match=r"no prompt named 'b' in the bank \(a\)"):
    bank.index("b")


def test_missing_prompt_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does-not-exist.npy does not exist"):
    bank_lib.load_prompt_source(str(tmp_path / "does-not-exist.npy"))


def test_prompt_flags_read_name_path_pairs_and_a_directory(tmp_path):
  for name in ("b", "a"):
    checkpoint_io.save_prompt_npy(np.ones((2, 4)), str(tmp_path / "bank" / f"{name}.npy"))
  checkpoint_io.save_peft_adapter(np.ones((3, 4)), str(tmp_path / "bank" / "c"), num_layers=1,
                                  num_attention_heads=1)
  pairs = bank_lib.parse_prompt_flags([f"x={tmp_path}/bank/a.npy", str(tmp_path / "bank")])
  assert [name for name, _ in pairs] == ["x", "a", "b", "c"]
  bank = bank_lib.PromptBank.load(pairs)
  assert bank.lengths == (2, 2, 2, 3)


def test_gin_built_model_applies_after_gin_is_cleared():
  gin.clear_config()
  cli.parse_gin(["models/t5_1_1_tiny.gin", "models/prompt.gin", "prompts/from_uniform.gin"],
                ["PROMPT_LENGTH = 3"], [])
  model = gin.get_configurable(Transformer)()
  gin.clear_config()
  tokens = jnp.ones((1, 4), jnp.int32)
  variables = jax.jit(functools.partial(model.init, enable_dropout=False))(jax.random.PRNGKey(0), tokens, tokens,
                                                                           tokens)
  assert variables["params"]["encoder"]["prompt"]["prompt"]["prompt"].value.shape == (3, 32)
