"""The T5 1.1 network: structure, masks, decoding, remat, logical axes (HF parity is in test_model_parity.py)."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _optional import needs

from prompt_tuning_jax import prompts
from prompt_tuning_jax.inference.decoding import greedy_decode
from prompt_tuning_jax.model import T5Config, Transformer, config_for_size
from prompt_tuning_jax.model.layers import relative_position_bucket

TINY = config_for_size("tiny")
PROMPT_LENGTH = 5


def _batch(seed=0, batch=3, source=10, target=6, vocab=TINY.vocab_size):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, (batch, source)).astype(np.int32)
  enc[0, 7:] = 0
  enc[1, 3:] = 0
  tgt = rng.randint(2, vocab, (batch, target)).astype(np.int32)
  tgt[0, 4:] = 0
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return jnp.asarray(enc), jnp.asarray(dec), jnp.asarray(tgt)


def _prompted(config=TINY, length=PROMPT_LENGTH, init=None):
  init = init or prompts.uniform()
  return Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=length, init=init))


def _init(model, batch, seed=0):
  init = jax.jit(functools.partial(model.init, enable_dropout=False))
  return nn.meta.unbox(init(jax.random.PRNGKey(seed), *batch)["params"])


def _paths(tree):
  return {"/".join(k) for k in flax.traverse_util.flatten_dict(tree)}


def test_prompted_model_is_the_plain_network_plus_one_prompt_parameter():
  batch = _batch()
  plain, prompted = _paths(_init(Transformer(TINY), batch)), _paths(_init(_prompted(), batch))
  assert prompted - plain == {"encoder/prompt/prompt/prompt"}
  assert plain <= prompted


def test_parameter_shapes_follow_t5x_layout():
  config = T5Config(vocab_size=64, emb_dim=32, num_heads=6, head_dim=8, mlp_dim=48, num_encoder_layers=2,
                    num_decoder_layers=3, relative_attention_num_buckets=16)
  params = flax.traverse_util.flatten_dict(_init(_prompted(config), _batch(vocab=64)), sep="/")
  assert params["token_embedder/embedding"].shape == (64, 32)
  assert params["encoder/layers_1/attention/query/kernel"].shape == (32, 48)
  assert params["encoder/layers_1/attention/out/kernel"].shape == (48, 32)
  assert params["decoder/layers_2/mlp/wi_1/kernel"].shape == (32, 48)
  assert params["decoder/layers_2/mlp/wo/kernel"].shape == (48, 32)
  assert params["encoder/relpos_bias/rel_embedding"].shape == (6, 16)
  assert params["decoder/logits_dense/kernel"].shape == (32, 64)
  assert params["encoder/prompt/prompt/prompt"].shape == (PROMPT_LENGTH, 32)
  assert "decoder/layers_3/mlp/wo/kernel" not in params


def test_every_parameter_has_logical_axes():
  model = _prompted()
  variables = jax.jit(functools.partial(model.init, enable_dropout=False))(jax.random.PRNGKey(0), *_batch())
  specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(variables)["params"], sep="/")
  shapes = flax.traverse_util.flatten_dict(nn.meta.unbox(variables)["params"], sep="/")
  for path, spec in specs.items():
    assert spec is not None and len(spec) == shapes[path].ndim, path
  assert tuple(specs["encoder/prompt/prompt/prompt"]) == ("prompt", "prompt_embed")
  assert tuple(specs["token_embedder/embedding"]) == ("vocab", "embed")


def test_encoder_output_covers_prompt_and_input_positions():
  model = _prompted()
  enc, dec, tgt = _batch()
  params = _init(model, (enc, dec, tgt))
  encoded = model.apply({"params": params}, enc, enable_dropout=False, method=model.encode)
  assert encoded.shape == (3, PROMPT_LENGTH + enc.shape[1], TINY.emb_dim)


def test_input_padding_is_masked_but_prompt_is_seen():
  model = _prompted()
  enc, dec, tgt = _batch()
  params = _init(model, (enc, dec, tgt))
  logits = model.apply({"params": params}, enc, dec, tgt, enable_dropout=False)
  # More trailing padding changes nothing: padded positions are invisible to the real ones.
  wider = jnp.pad(enc, ((0, 0), (0, 4)))
  logits_wider = model.apply({"params": params}, wider, dec, tgt, enable_dropout=False)
  real = np.asarray(tgt) > 0  # padded target rows attend to nothing and are never scored
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(logits_wider)[real], rtol=1e-5, atol=1e-5)
  # Changing the prompt changes the output: the decoder sees the prompt through the encoder.
  changed = jax.tree_util.tree_map(lambda x: x, params)
  changed["encoder"]["prompt"]["prompt"]["prompt"] = params["encoder"]["prompt"]["prompt"]["prompt"] + 1.0
  logits_changed = model.apply({"params": changed}, enc, dec, tgt, enable_dropout=False)
  assert not np.allclose(logits, logits_changed, atol=1e-3)


def _prompt_of_token_embeddings(params, token_ids):
  """`params` with the prompt set to the embeddings of `token_ids` [P] (so it reads like those tokens)."""
  changed = jax.tree_util.tree_map(lambda x: x, params)
  changed["encoder"]["prompt"]["prompt"]["prompt"] = params["token_embedder"]["embedding"][np.asarray(token_ids)]
  return changed


PROMPT_TOKENS = (7, 19, 3, 42, 11)  # PROMPT_LENGTH ids


def test_prompt_is_prepended_to_the_embedded_inputs_and_seen_by_every_position():
  """A prompt equal to the embeddings of tokens w gives exactly the plain model's logits on [w; inputs]: the prompt
  comes first, every encoder position (and the decoder) attends to it, relative positions span P + T."""
  model = _prompted()
  enc, dec, tgt = _batch()
  params = _prompt_of_token_embeddings(_init(model, (enc, dec, tgt)), PROMPT_TOKENS)
  logits = model.apply({"params": params}, enc, dec, tgt, enable_dropout=False)
  plain_params = {k: v for k, v in params.items() if k != "encoder"}
  plain_params["encoder"] = {k: v for k, v in params["encoder"].items() if k != "prompt"}
  # Left-aligned: [w; real tokens] then the padding, as the prompted encoder sees it (its padding is masked).
  rows = [np.concatenate([PROMPT_TOKENS, row[row > 0], row[row == 0]]) for row in np.asarray(enc)]
  with_words = jnp.asarray(np.stack(rows).astype(np.int32))
  reference = Transformer(TINY).apply({"params": plain_params}, with_words, dec, tgt, enable_dropout=False)
  real = np.asarray(tgt) > 0
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(reference)[real], rtol=1e-5, atol=1e-5)


def test_a_fully_padded_example_still_attends_to_the_prompt():
  model = _prompted()
  enc, dec, tgt = _batch()
  enc = enc.at[2].set(0)
  params = _prompt_of_token_embeddings(_init(model, (enc, dec, tgt)), PROMPT_TOKENS)
  logits = np.asarray(model.apply({"params": params}, enc, dec, tgt, enable_dropout=False))
  assert np.all(np.isfinite(logits))
  # The padded row's output is the plain model's on the prompt's tokens alone ...
  plain_params = {k: v for k, v in params.items() if k != "encoder"}
  plain_params["encoder"] = {k: v for k, v in params["encoder"].items() if k != "prompt"}
  words = jnp.asarray(np.asarray([PROMPT_TOKENS], np.int32))
  reference = Transformer(TINY).apply({"params": plain_params}, words, dec[2:], tgt[2:], enable_dropout=False)
  np.testing.assert_allclose(logits[2], np.asarray(reference)[0], rtol=1e-5, atol=1e-5)
  # ... and changes when the prompt changes.
  other = _prompt_of_token_embeddings(params, (8, 9, 10, 12, 13))
  changed = np.asarray(model.apply({"params": other}, enc, dec, tgt, enable_dropout=False))
  assert np.max(np.abs(changed[2] - logits[2])) > 1e-2


@pytest.mark.parametrize("bidirectional", [True, False])
@needs("torch", "transformers")
def test_relative_buckets_equal_huggingface(bidirectional):
  import torch
  from transformers.models.t5.modeling_t5 import T5Attention

  relative = np.arange(-300, 300)[None, :] - np.zeros((1, 1), np.int64)
  for buckets, distance in [(32, 128), (8, 20)]:
    ours = relative_position_bucket(jnp.asarray(relative), bidirectional, buckets, distance)
    ref = T5Attention._relative_position_bucket(torch.tensor(relative), bidirectional=bidirectional,
                                                num_buckets=buckets, max_distance=distance)
    np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


def test_incremental_decoding_matches_teacher_forced_logits():
  model = _prompted()
  enc, dec, tgt = _batch()
  tgt = jnp.where(tgt == 0, 5, tgt)  # every position real, so teacher forcing and decoding see the same context
  dec = jnp.concatenate([jnp.zeros((3, 1), jnp.int32), tgt[:, :-1]], axis=1)
  params = _init(model, (enc, dec, tgt))
  full = model.apply({"params": params}, enc, dec, tgt, enable_dropout=False)
  length = dec.shape[1]
  encoded = model.apply({"params": params}, enc, enable_dropout=False, method=model.encode)
  _, variables = model.apply({"params": params}, encoded, enc, dec, tgt, enable_dropout=False, decode=True,
                             max_decode_length=length, mutable=["cache"], method=model.decode)
  cache = variables["cache"]
  for t in range(length):
    step_logits, variables = model.apply({"params": params, "cache": cache}, encoded, enc, dec[:, t:t + 1],
                                         tgt[:, t:t + 1], enable_dropout=False, decode=True,
                                         max_decode_length=length, mutable=["cache"], method=model.decode)
    cache = variables["cache"]
    np.testing.assert_allclose(step_logits[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


def _emits_eos_where_it_emitted(params, token):
  """`params` whose output projection swaps the logits of `token` and EOS (id 1): EOS is argmax exactly where
  `token` was."""
  changed = jax.tree_util.tree_map(lambda x: x, params)
  kernel = np.array(params["decoder"]["logits_dense"]["kernel"])  # [embed, vocab]
  kernel[:, [1, token]] = kernel[:, [token, 1]]
  changed["decoder"]["logits_dense"]["kernel"] = jnp.asarray(kernel)
  return changed


def _free_decode_and_eos_params(length):
  model = _prompted()
  enc, dec, tgt = _batch()
  params = _init(model, (enc, dec, tgt))
  free = np.asarray(greedy_decode(model, params, enc, length, eos_id=-1))  # an id never produced: no stop
  assert not np.any(free == 1), "the random model already emits EOS; pick another seed"
  token = int(free[0, 1])  # row 0 emits it at step <= 1, so EOS comes with steps to spare
  return model, enc, params, _emits_eos_where_it_emitted(params, token), free, token


def test_greedy_decode_follows_argmax_and_pads_after_eos():
  length = 6
  model, enc, _, params, _, _ = _free_decode_and_eos_params(length)
  tokens = np.asarray(greedy_decode(model, params, enc, length, eos_id=1))
  assert tokens.shape == (3, length)
  # Replaying the decoded prefix teacher-forced must reproduce each argmax until EOS.
  prefix = np.concatenate([np.zeros((3, 1), np.int32), tokens[:, :-1]], axis=1)
  logits = model.apply({"params": params}, enc, jnp.asarray(prefix), jnp.ones_like(prefix), enable_dropout=False)
  argmax = np.asarray(jnp.argmax(logits, -1))
  ended_early = 0
  for row in range(3):
    ended = False
    for t in range(length):
      if ended:
        assert tokens[row, t] == 0
      else:
        assert tokens[row, t] == argmax[row, t]
        ended = tokens[row, t] == 1
        ended_early += bool(ended and t < length - 1)
  assert ended_early >= 1  # the padding branch ran


def test_greedy_decode_pads_everything_after_eos():
  length = 6
  model, enc, _, params, free, token = _free_decode_and_eos_params(length)
  tokens = np.asarray(greedy_decode(model, params, enc, length, eos_id=1))
  for row in range(3):
    hits = np.flatnonzero(free[row] == token)
    if hits.size == 0:  # never reaches EOS: the free decode, unchanged
      np.testing.assert_array_equal(tokens[row], free[row])
      continue
    stop = hits[0]
    np.testing.assert_array_equal(tokens[row, :stop], free[row, :stop])
    assert tokens[row, stop] == 1 and np.all(tokens[row, stop + 1:] == 0), (row, tokens[row])
  assert tokens[0, 1] == 1 and np.all(tokens[0, 2:] == 0)


def test_rematerialized_layers_give_identical_loss_and_gradient():
  batch = _batch()
  plain, remat = _prompted(), _prompted(TINY.replace(remat_policy="full"))
  params = _init(plain, batch)

  def loss(model, params):
    return jnp.mean(model.apply({"params": params}, *batch, enable_dropout=False) ** 2)

  l1, g1 = jax.jit(jax.value_and_grad(functools.partial(loss, plain)))(params)
  l2, g2 = jax.jit(jax.value_and_grad(functools.partial(loss, remat)))(params)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)


def test_dropout_is_active_only_when_enabled():
  model = _prompted(TINY.replace(dropout_rate=0.3))
  batch = _batch()
  params = _init(model, batch)
  apply = jax.jit(model.apply, static_argnames="enable_dropout")
  det1 = apply({"params": params}, *batch, enable_dropout=False)
  det2 = apply({"params": params}, *batch, enable_dropout=False)
  np.testing.assert_array_equal(det1, det2)
  drop = apply({"params": params}, *batch, enable_dropout=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(det1, drop)


def test_bfloat16_activations_keep_float32_params_and_logits():
  model = _prompted(TINY.replace(dtype="bfloat16"))
  batch = _batch()
  params = _init(model, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  logits, state = model.apply({"params": params}, *batch, enable_dropout=False, capture_intermediates=True,
                              mutable=["intermediates"])
  assert logits.dtype == jnp.float32
  # Every projection (attention q/k/v/out, MLP wi/wo) and every layer's output computes in bfloat16.
  computed = {"/".join(path[:-1]): jax.tree_util.tree_leaves(leaf)[0].dtype for path, leaf in
              flax.traverse_util.flatten_dict(state["intermediates"]).items() if path[-1] == "__call__"}
  layers = [path for path in computed
            if path.split("/")[-1] in {"query", "key", "value", "out", "wi_0", "wi_1", "wo"}
            or path.split("/")[-1].startswith("layers_")]
  assert len(layers) == 2 * (4 + 3 + 1) + 2 * (4 + 4 + 3 + 1), sorted(layers)  # every one of the tiny model
  assert {computed[path] for path in layers} == {jnp.dtype(jnp.bfloat16)}
  # Within bfloat16 rounding of the float32 model, and not the float32 model itself.
  reference = np.asarray(_prompted().apply({"params": params}, *batch, enable_dropout=False))
  error = np.abs(np.asarray(logits) - reference)
  scale = float(np.max(np.abs(reference)))
  assert error.max() < 0.05 * scale, (error.max(), scale)
  assert error.max() > 1e-3 * scale, "logits equal float32 ones: the activations did not compute in bfloat16"


def test_packed_inputs_with_a_prompt_are_refused():
  model = _prompted()
  enc, dec, tgt = _batch()
  params = _init(model, (enc, dec, tgt))
  with pytest.raises(ValueError, match="pack=False"):
    model.apply({"params": params}, enc, dec, tgt, jnp.ones_like(enc), jnp.ones_like(tgt), enable_dropout=False)


def test_config_rejects_unknown_size_and_bad_values():
  with pytest.raises(ValueError, match="unknown model size"):
    config_for_size("huge")
  with pytest.raises(ValueError, match="num_heads must be positive"):
    T5Config(num_heads=0)
  with pytest.raises(ValueError, match="remat_policy"):
    T5Config(remat_policy="sometimes")
