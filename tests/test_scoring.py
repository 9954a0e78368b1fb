"""Teacher-forced scoring of given targets and rank classification against independently computed losses."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning_jax import prompts
from prompt_tuning_jax.data import vocab
from prompt_tuning_jax.inference import decoding, scoring
from prompt_tuning_jax.model import T5Config, Transformer
from prompt_tuning_jax.training import losses

VOCAB = 40
MODEL = Transformer(T5Config(vocab_size=VOCAB, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                             num_encoder_layers=2, num_decoder_layers=2),
                    prompt_factory=functools.partial(prompts.PrefixPrompt, length=3))


@pytest.fixture(scope="module")
def inputs():
  tokens = np.random.RandomState(1).randint(2, VOCAB, (5, 6))
  tokens[1, 3:] = 0
  return jnp.asarray(tokens, jnp.int32)


@pytest.fixture(scope="module")
def targets():
  tokens = np.random.RandomState(2).randint(2, VOCAB, (5, 4))
  tokens[:, -1] = 1
  tokens[0, 2:] = [1, 0]  # a shorter target, padded
  return jnp.asarray(tokens, jnp.int32)


@pytest.fixture(scope="module")
def params(inputs):
  variables = jax.jit(functools.partial(MODEL.init, enable_dropout=False))(
      jax.random.PRNGKey(0), inputs, inputs[:, :4], inputs[:, :4])
  return nn.meta.unbox(variables["params"])


@jax.jit
def _loss_of_one(params, inputs, targets):
  """The training loss (no z-loss) of one example [1, ...]: the model's forward pass and T5X's cross-entropy."""
  decoder_inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))
  logits = MODEL.apply({"params": params}, inputs, decoder_inputs, targets, enable_dropout=False)
  loss, _, _ = losses.compute_weighted_cross_entropy(logits, targets, targets > 0, losses.LossConfig(z_loss=0.0))
  return loss


def test_score_is_minus_the_per_example_teacher_forced_loss(params, inputs, targets):
  scores = scoring.score(MODEL, params, inputs, targets)
  assert scores.shape == (5,) and scores.dtype == jnp.float32
  expected = [-float(_loss_of_one(params, inputs[i:i + 1], targets[i:i + 1])) for i in range(5)]
  np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_score_from_a_precomputed_encoder_output_equals_score_from_tokens(params, inputs, targets):
  encoded, mask = decoding.encode(MODEL, params, inputs)
  np.testing.assert_allclose(scoring.score(MODEL, params, None, targets, encoded=encoded, encoder_mask=mask),
                             scoring.score(MODEL, params, inputs, targets), rtol=1e-6)


def test_target_mask_restricts_the_scored_positions(params, inputs, targets):
  full = scoring.score(MODEL, params, inputs, targets)
  first_two = scoring.score(MODEL, params, inputs, targets, target_mask=jnp.arange(4)[None, :] < 2)
  np.testing.assert_allclose(first_two, scoring.score(MODEL, params, inputs, targets[:, :2]), rtol=1e-5)
  assert (np.asarray(first_two) > np.asarray(full)).all()  # fewer log-probabilities summed


def test_the_default_target_mask_ends_at_the_last_non_zero_token():
  np.testing.assert_array_equal(scoring.default_target_mask(jnp.asarray([[5, 0, 7, 1, 0, 0], [1, 0, 0, 0, 0, 0]])),
                                [[True, True, True, True, False, False], [True, False, False, False, False, False]])


def test_rank_classification_picks_the_candidate_with_the_highest_log_likelihood(params, inputs):
  candidates = jnp.asarray([[39, 1, 0], [20, 1, 0], [34, 1, 0], [13, 14, 1]], jnp.int32)
  predictions, scores = scoring.rank_classify(MODEL, params, inputs, candidates)
  assert predictions.shape == (5,) and scores.shape == (5, 4)
  for c in range(4):  # each candidate scored on its own, one example at a time
    expected = [-float(_loss_of_one(params, inputs[i:i + 1], candidates[c:c + 1])) for i in range(5)]
    np.testing.assert_allclose(scores[:, c], expected, rtol=1e-5)
  np.testing.assert_array_equal(predictions, np.argmax(np.asarray(scores), axis=1))
  assert len(set(np.asarray(predictions).tolist())) > 1  # the examples do not all agree


def test_rank_classification_ties_go_to_the_first_candidate(params, inputs):
  candidates = jnp.asarray([[5, 1], [7, 1], [11, 1]], jnp.int32)
  _, scores = scoring.rank_classify(MODEL, params, inputs, candidates)
  best = int(np.argmax(np.asarray(scores)[0]))
  repeated = jnp.concatenate([candidates[:best], candidates[best:best + 1], candidates[best:]], axis=0)
  predictions, tied = scoring.rank_classify(MODEL, params, inputs, repeated)
  assert tied[0, best] == tied[0, best + 1]
  assert int(predictions[0]) == best


def test_rank_classification_from_a_precomputed_encoder_output(params, inputs):
  candidates = jnp.asarray([[5, 1, 0], [7, 9, 1]], jnp.int32)
  encoded, mask = decoding.encode(MODEL, params, inputs)
  predicted, scores = scoring.rank_classify(MODEL, params, None, candidates, encoded=encoded, encoder_mask=mask)
  expected_predicted, expected_scores = scoring.rank_classify(MODEL, params, inputs, candidates)
  np.testing.assert_array_equal(predicted, expected_predicted)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)


def test_candidate_tokens_are_labels_with_eos_zero_padded():
  vocabulary = vocab.synthetic_vocabulary()
  tokens = scoring.candidate_tokens(vocabulary, ["red", "blue", "tie"])
  for row, label in zip(tokens, ["red", "blue", "tie"], strict=True):
    ids = list(vocabulary.encode(label)) + [vocabulary.eos_id]
    assert list(row[:len(ids)]) == ids and not row[len(ids):].any()
  assert scoring.candidate_tokens(vocabulary, ["red"], max_length=6).shape == (1, 6)


@pytest.mark.parametrize("labels, max_length, message", [
    ([], None, "no candidate labels"),
    (["red", "red"], None, "repeat a label"),
    (["red", ""], None, "tokenize to nothing"),
    (["red blue tie red blue"], 2, "raise TASK_FEATURE_LENGTHS['targets']"),
])
def test_bad_candidate_labels_are_one_line_errors(labels, max_length, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
    scoring.candidate_tokens(vocab.synthetic_vocabulary(), labels, max_length)
  assert "\n" not in str(error.value)


def test_mismatched_targets_and_inputs_are_a_one_line_error(params, inputs, targets):
  with pytest.raises(ValueError, match="pass one target per input"):
    scoring.score(MODEL, params, inputs, targets[:2])
