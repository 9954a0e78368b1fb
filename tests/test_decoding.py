"""Decoding over the KV cache: greedy, beam search with T5X's length penalty, sampling; EOS handling; bad input."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _optional import needs

from prompt_tuning_jax import prompts
from prompt_tuning_jax.inference import decoding, scoring
from prompt_tuning_jax.model import T5Config, Transformer

VOCAB, LENGTH, EOS = 40, 8, 1
CONFIG = T5Config(vocab_size=VOCAB, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, num_encoder_layers=2,
                  num_decoder_layers=2)
MODEL = Transformer(CONFIG, prompt_factory=functools.partial(prompts.PrefixPrompt, length=3))


@pytest.fixture(scope="module")
def inputs():
  tokens = np.random.RandomState(0).randint(2, VOCAB, (4, 7))
  tokens[0, 4:] = 0  # a padded row
  return jnp.asarray(tokens, jnp.int32)


@pytest.fixture(scope="module")
def params(inputs):
  variables = jax.jit(functools.partial(MODEL.init, enable_dropout=False))(
      jax.random.PRNGKey(0), inputs, inputs[:, :5], inputs[:, :5])
  return nn.meta.unbox(variables["params"])


@pytest.fixture(scope="module")
def eos_params(params):
  """The model with EOS's output column set to 1.05 x token 32's: it ends where it would have said 32
  (with a positive logit), so some rows end early and others run to the length limit."""
  kernel = params["decoder"]["logits_dense"]["kernel"]
  kernel = kernel.at[:, EOS].set(1.05 * kernel[:, 32])
  return {**params, "decoder": {**params["decoder"], "logits_dense": {"kernel": kernel}}}


def _score(params, inputs, tokens):
  """Teacher-forced log-likelihood of decoded rows [n, length] (scored up to and including their EOS)."""
  return np.asarray(scoring.score(MODEL, params, inputs, tokens, target_mask=decoding.sequence_mask(tokens, EOS)))


_teacher_forced_logits = jax.jit(lambda p, encoded, mask, tokens: decoding.decoder_logits(MODEL, p, encoded, mask,
                                                                                       tokens)[0])


def _ends_early(tokens):
  """Rows [n, length] with an EOS before the last position (so the 'pad after EOS' branch ran)."""
  return np.array([EOS in row[:-1] for row in np.asarray(tokens)])


def test_greedy_with_the_cache_equals_rerunning_the_whole_decoder_every_step(params, eos_params, inputs):
  for p in (params, eos_params):
    tokens, scores = decoding.decode(MODEL, p, inputs, max_decode_length=LENGTH)
    encoded, mask = decoding.encode(MODEL, p, inputs)
    reference, reference_scores = decoding.greedy_decode_uncached(MODEL, p, encoded, mask,
                                                                  max_decode_length=LENGTH)
    np.testing.assert_array_equal(tokens, reference)
    np.testing.assert_allclose(scores, reference_scores, rtol=1e-5)
    np.testing.assert_allclose(scores, _score(p, inputs, tokens), rtol=1e-5)


def test_tokens_after_eos_are_padding(eos_params, inputs):
  tokens, _ = decoding.decode(MODEL, eos_params, inputs, max_decode_length=LENGTH)
  tokens = np.asarray(tokens)
  ends = _ends_early(tokens)
  assert ends.any() and not ends.all(), tokens  # both branches ran
  for row in tokens[ends]:
    eos_at = list(row).index(EOS)
    assert (row[eos_at + 1:] == 0).all()
  # Without the padding the model would go on: after its EOS a row's next argmax is not 0.
  encoded, mask = decoding.encode(MODEL, eos_params, inputs)
  logits = _teacher_forced_logits(eos_params, encoded, mask, jnp.pad(tokens[:, :-1], ((0, 0), (1, 0))))
  row = int(np.flatnonzero(ends)[0])
  eos_at = list(tokens[row]).index(EOS)
  assert int(jnp.argmax(logits[row, eos_at + 1])) != 0


def test_greedy_decode_is_decode_without_scores(params, inputs):
  tokens, _ = decoding.decode(MODEL, params, inputs, max_decode_length=LENGTH)
  np.testing.assert_array_equal(decoding.greedy_decode(MODEL, params, inputs, LENGTH, EOS), tokens)


def test_precomputed_encoder_output_decodes_like_tokens(params, inputs):
  encoded, mask = decoding.encode(MODEL, params, inputs)
  assert encoded.shape == (4, 3 + 7, 32) and mask.shape == (4, 10)
  np.testing.assert_array_equal(mask[0], [True] * 3 + [True] * 4 + [False] * 3)
  for method in ("greedy", "beam"):
    from_tokens = decoding.decode(MODEL, params, inputs, max_decode_length=LENGTH, method=method)
    from_encoded = decoding.decode(MODEL, params, max_decode_length=LENGTH, method=method, encoded=encoded,
                                   encoder_mask=mask)
    np.testing.assert_array_equal(from_tokens[0], from_encoded[0])


def test_a_masked_encoder_position_is_ignored(params, inputs):
  """A left-padded prompt row, masked, changes nothing: masked keys get no attention weight."""
  encoded, mask = decoding.encode(MODEL, params, inputs)
  padded = jnp.concatenate([jnp.full_like(encoded[:, :1], 3.0), encoded], axis=1)
  padded_mask = jnp.concatenate([jnp.zeros_like(mask[:, :1]), mask], axis=1)
  tokens, scores = decoding.decode(MODEL, params, max_decode_length=LENGTH, encoded=encoded, encoder_mask=mask)
  padded_tokens, padded_scores = decoding.decode(MODEL, params, max_decode_length=LENGTH, encoded=padded,
                                                 encoder_mask=padded_mask)
  np.testing.assert_array_equal(tokens, padded_tokens)
  np.testing.assert_allclose(scores, padded_scores, rtol=1e-6)


def test_one_beam_without_length_penalty_equals_greedy(params, inputs):
  greedy, greedy_scores = decoding.decode(MODEL, params, inputs, max_decode_length=LENGTH)
  beam, beam_scores = decoding.decode(MODEL, params, inputs, max_decode_length=LENGTH, method="beam", num_beams=1,
                                      alpha=0.0)
  # Where EOS is never second best along the greedy path, no shorter finished sequence competes with greedy's
  # (the general case is the next test): there 1-beam search is greedy.
  encoded, mask = decoding.encode(MODEL, params, inputs)
  logits = _teacher_forced_logits(params, encoded, mask, jnp.pad(greedy[:, :-1], ((0, 0), (1, 0))))
  runner_up = jax.lax.top_k(logits, 2)[1][..., 1]
  rows = ~np.asarray((runner_up == EOS) & decoding.sequence_mask(greedy, EOS)).any(-1)
  assert rows.sum() >= 3
  np.testing.assert_array_equal(beam[rows, 0], greedy[rows])
  np.testing.assert_allclose(beam_scores[rows, 0], greedy_scores[rows], rtol=1e-5)


def _greedy_prefixes_ended_by_eos(p, inputs):
  """Per row, the candidates of 1-beam search: greedy's non-EOS path cut where EOS ranks in the two best tokens and
  ended by EOS (or, if that never happens, the whole path)."""
  encoded, mask = decoding.encode(MODEL, p, inputs)
  path = np.zeros((inputs.shape[0], LENGTH), np.int32)
  candidates = [[] for _ in range(inputs.shape[0])]
  for position in range(LENGTH):  # causal: the logits at `position` see path[:, :position] only
    logits = _teacher_forced_logits(p, encoded, mask, np.pad(path[:, :-1], ((0, 0), (1, 0))))
    best_two = np.asarray(jax.lax.top_k(logits[:, position], 2)[1])
    for row, (first, second) in enumerate(best_two):
      if EOS in (first, second):
        candidates[row].append([*path[row, :position], EOS])
      path[row, position] = second if first == EOS else first
  return [found or [list(path[row])] for row, found in enumerate(candidates)]


def test_one_beam_returns_the_most_likely_of_greedy_prefixes_ended_by_eos(params, eos_params, inputs):
  """t5x's 1-beam search (its eval decoding): the live beam follows greedy's best non-EOS token; every EOS among
  the two best extensions finishes a candidate; the best candidate by penalized score is returned (the live beam
  if none finished). Not greedy: on these models some rows end at an EOS greedy passed over."""
  several, not_greedy = False, False
  for p in (params, eos_params):
    candidates = _greedy_prefixes_ended_by_eos(p, inputs)
    several = several or any(len(c) > 1 for c in candidates)
    owner = np.asarray([row for row, found in enumerate(candidates) for _ in found])
    flat = [c for found in candidates for c in found]
    padded = np.asarray([c + [0] * (LENGTH - len(c)) for c in flat], np.int32)
    log_likelihood = _score(p, inputs[owner], padded)
    greedy, _ = decoding.decode(MODEL, p, inputs, max_decode_length=LENGTH)
    for alpha in (0.0, 0.6):
      beam, beam_scores = decoding.decode(MODEL, p, inputs, max_decode_length=LENGTH, method="beam", num_beams=1,
                                          alpha=alpha)
      scores = log_likelihood / np.asarray(decoding.brevity_penalty(alpha, [len(c) for c in flat]))
      for row in range(inputs.shape[0]):
        best = int(np.flatnonzero(owner == row)[np.argmax(scores[owner == row])])
        np.testing.assert_array_equal(beam[row, 0], padded[best])
        np.testing.assert_allclose(beam_scores[row, 0], scores[best], rtol=1e-5)
      not_greedy = not_greedy or bool((np.asarray(beam[:, 0]) != np.asarray(greedy)).any())
  assert several and not_greedy  # the data exercises a choice, and a result greedy does not give


@pytest.mark.parametrize("num_beams, alpha", [(3, 0.6), (4, 0.0)])
def test_every_beam_score_is_its_teacher_forced_log_likelihood_over_the_brevity_penalty(
    eos_params, inputs, num_beams, alpha):
  tokens, scores = decoding.decode(MODEL, eos_params, inputs, max_decode_length=LENGTH, method="beam",
                                   num_beams=num_beams, alpha=alpha)
  assert tokens.shape == (4, num_beams, LENGTH) and scores.shape == (4, num_beams)
  flat = tokens.reshape(-1, LENGTH)
  assert _ends_early(flat).any() and not _ends_early(flat).all()  # finished and length-limited beams
  lengths = np.asarray(decoding.sequence_mask(flat, EOS).sum(-1))
  expected = _score(eos_params, jnp.repeat(inputs, num_beams, axis=0), flat) / decoding.brevity_penalty(alpha,
                                                                                                         lengths)
  np.testing.assert_allclose(scores.reshape(-1), expected, rtol=1e-5)
  for row in np.asarray(tokens):  # distinct beams, each padded after its EOS
    assert len({tuple(beam) for beam in row}) == num_beams
    for beam in row:
      if EOS in beam:
        assert (beam[list(beam).index(EOS) + 1:] == 0).all()


@needs("t5x")
@pytest.mark.parametrize("num_beams, alpha", [(1, 0.6), (3, 0.6)])
def test_beam_search_equals_t5x_beam_search_over_the_same_cache(eos_params, inputs, num_beams, alpha):
  """t5x's own `decoding.beam_search` driven by this model's decoder: the same finished beams and scores (t5x
  lists them worst first and pads missing ones with -1e7 rows, where ours holds live beams, see decoding.py)."""
  from t5x import decoding as t5x_decoding
  encoded, mask = decoding.encode(MODEL, eos_params, inputs)
  cache = decoding.init_cache(MODEL, eos_params, encoded, mask, LENGTH)
  beam_encoded, beam_mask = jnp.repeat(encoded, num_beams, 0), jnp.repeat(mask, num_beams, 0)

  def tokens_to_logits(state):
    logits, new_cache = decoding.decoder_logits(MODEL, eos_params, beam_encoded, beam_mask, state.cur_token,
                                                cache=state.cache, max_decode_length=LENGTH)
    return logits[:, 0], new_cache

  reference, reference_scores = jax.jit(lambda c: t5x_decoding.beam_search(
      jnp.zeros((4, LENGTH), jnp.int32), c, tokens_to_logits, EOS, num_decodes=num_beams, alpha=alpha,
      max_decode_len=LENGTH))(cache)
  reference, reference_scores = np.asarray(reference)[:, ::-1], np.asarray(reference_scores)[:, ::-1]
  tokens, scores = decoding.decode(MODEL, eos_params, inputs, max_decode_length=LENGTH, method="beam",
                                   num_beams=num_beams, alpha=alpha)
  compared_finished = False
  for row in range(4):
    if not (reference[row] == EOS).any():  # none finished: t5x returns the live beams, unpenalized
      np.testing.assert_array_equal(tokens[row], reference[row])
      np.testing.assert_allclose(scores[row], reference_scores[row] / decoding.brevity_penalty(alpha, LENGTH),
                                 rtol=1e-5)
      continue
    finished = reference_scores[row] > decoding.NEG_INF / 2
    compared_finished = True
    np.testing.assert_array_equal(tokens[row, :finished.sum()], reference[row, finished])
    np.testing.assert_allclose(scores[row, :finished.sum()], reference_scores[row, finished], rtol=1e-5)
  assert compared_finished


def test_beam_search_keeping_every_candidate_returns_the_exact_ranking():
  """With 2 x beams >= every extension, nothing is pruned: the beams are the finished sequences (length <= 2)
  best first by penalized score, then the best unfinished ones; compared with a brute-force enumeration."""
  vocab, length, beams, alpha = 8, 2, 28, 0.6
  model = Transformer(CONFIG.replace(vocab_size=vocab))
  tokens = jnp.asarray([[3, 4, 5, 0], [6, 2, 7, 5]], jnp.int32)
  params = nn.meta.unbox(jax.jit(functools.partial(model.init, enable_dropout=False))(
      jax.random.PRNGKey(1), tokens, tokens[:, :2], tokens[:, :2])["params"])
  result, result_scores = decoding.decode(model, params, tokens, max_decode_length=length, method="beam",
                                          num_beams=beams, alpha=alpha)
  all_sequences = [[EOS, 0]] + [[a, b] for a, b in itertools.product(range(vocab), repeat=2) if a != EOS]
  all_sequences = np.asarray(all_sequences, np.int32)
  mask = decoding.sequence_mask(all_sequences, EOS)
  penalty = np.asarray(decoding.brevity_penalty(alpha, mask.sum(-1)))
  finished = np.asarray((all_sequences == EOS).any(-1))
  for row in range(tokens.shape[0]):
    log_likelihood = np.asarray(scoring.score(model, params, jnp.repeat(tokens[row:row + 1], len(all_sequences), 0),
                                              all_sequences, target_mask=mask))
    scores = log_likelihood / penalty
    order = sorted(range(len(all_sequences)), key=lambda i: (not finished[i], -scores[i]))[:beams]
    np.testing.assert_array_equal(result[row], all_sequences[order])
    np.testing.assert_allclose(result_scores[row], scores[order], rtol=1e-5)


def test_sampling_is_determined_by_its_seed(params, inputs):
  sample = functools.partial(decoding.decode, MODEL, params, inputs, max_decode_length=LENGTH, method="sample",
                             temperature=2.0)
  first, first_scores = sample(rng=jax.random.PRNGKey(3))
  again, again_scores = sample(rng=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(first_scores, again_scores)
  np.testing.assert_array_equal(sample(rng=3)[0], first)  # an int seed is PRNGKey(seed)
  others = [np.asarray(sample(rng=seed)[0]) for seed in range(4, 8)]
  assert any((other != np.asarray(first)).any() for other in others)


def test_sample_scores_are_the_model_log_likelihood_of_the_sample(eos_params, inputs):
  tokens, scores = decoding.decode(MODEL, eos_params, inputs, max_decode_length=LENGTH, method="sample", rng=0,
                                   temperature=1.5, top_k=10, top_p=0.9)
  np.testing.assert_allclose(scores, _score(eos_params, inputs, tokens), rtol=1e-5)
  for row in np.asarray(tokens):
    if EOS in row:
      assert (row[list(row).index(EOS) + 1:] == 0).all()


@pytest.mark.parametrize("settings", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4)],
                         ids=["top_k=1", "tiny_top_p", "tiny_temperature"])
def test_sampling_restricted_to_the_most_likely_token_is_greedy(eos_params, inputs, settings):
  greedy, greedy_scores = decoding.decode(MODEL, eos_params, inputs, max_decode_length=LENGTH)
  tokens, scores = decoding.decode(MODEL, eos_params, inputs, max_decode_length=LENGTH, method="sample", rng=5,
                                   **{"temperature": 1.0, **settings})
  np.testing.assert_array_equal(tokens, greedy)
  np.testing.assert_allclose(scores, greedy_scores, rtol=1e-6)


def test_top_p_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.asarray([0.05, 0.5, 0.15, 0.3]))
  kept = lambda p: set(np.flatnonzero(np.asarray(decoding.filter_logits(logits, 1.0, top_p=p)) > -1e6))
  assert kept(0.5) == {1}  # the most likely token alone reaches 0.5
  assert kept(0.51) == {1, 3}
  assert kept(0.8) == {1, 3}
  assert kept(0.81) == {1, 3, 2}
  assert kept(1.0) == {0, 1, 2, 3}
  draws = jax.random.categorical(jax.random.PRNGKey(0), decoding.filter_logits(logits, 1.0, top_p=0.8),
                                 shape=(4000,))
  counts = np.bincount(np.asarray(draws), minlength=4)
  assert counts[0] == counts[2] == 0
  assert abs(counts[1] / 4000 - 0.5 / 0.8) < 0.03  # renormalized within the nucleus


def test_top_k_and_temperature_shape_the_distribution():
  logits = jnp.asarray([[1.0, 3.0, 2.0, 0.0]])
  kept = np.asarray(decoding.filter_logits(logits, 1.0, top_k=2)) > -1e6
  np.testing.assert_array_equal(kept, [[False, True, True, False]])
  np.testing.assert_allclose(decoding.filter_logits(logits, 2.0), logits / 2.0)
  # A higher temperature flattens the distribution: the runner-up is drawn more often.
  draws = {t: np.asarray(jax.random.categorical(jax.random.PRNGKey(1), decoding.filter_logits(logits[0], t),
                                                shape=(4000,))) for t in (0.5, 2.0)}
  assert (draws[2.0] == 2).mean() > (draws[0.5] == 2).mean() + 0.1


def test_brevity_penalty_is_t5x_formula():
  np.testing.assert_allclose(decoding.brevity_penalty(0.6, 7), ((5 + 7) / 6) ** 0.6)
  np.testing.assert_allclose(decoding.brevity_penalty(0.0, 7), 1.0)


@pytest.mark.parametrize("settings, message", [
    (dict(method="sample", top_p=0.0), "top_p must be in (0, 1]"),
    (dict(method="sample", top_p=1.5), "top_p must be in (0, 1]"),
    (dict(method="sample", top_k=-1), "top_k must be an int >= 0"),
    (dict(method="sample", temperature=0.0), "temperature must be > 0"),
    (dict(method="beam", num_beams=0), "num_beams must be an int >= 1"),
    (dict(method="beam", alpha=-0.5), "alpha (length penalty) must be >= 0"),
    (dict(max_decode_length=0), "max_decode_length must be a positive int"),
    (dict(method="nucleus"), "decoding method 'nucleus' is unknown"),
    (dict(method="sample"), "sampling needs a seed"),
])
def test_bad_decoding_arguments_are_one_line_errors(params, inputs, settings, message):
  kwargs = {"max_decode_length": LENGTH, "rng": 0, **settings}
  if settings == {"method": "sample"}:
    kwargs.pop("rng")
  with pytest.raises(ValueError) as error:
    decoding.decode(MODEL, params, inputs, **kwargs)
  assert message in str(error.value) and "\n" not in str(error.value)
