"""The Python API: load model + prompt, prompts in parameter trees, batches, and the Predictor's three calls."""

import gin
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning_jax import checkpoints as checkpoint_io
from prompt_tuning_jax import demo, inference
from prompt_tuning_jax.data import vocab
from prompt_tuning_jax.inference import decoding, ensemble, scoring
from prompt_tuning_jax.model.t5 import Transformer
from prompt_tuning_jax.training import checkpointing

DECODE_LENGTH = 10
INPUTS = ["k d a f", "b c", "a a b e g", "f e d c b a"]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
  """(checkpoint, vocabulary, {name: prompt file}) with the packaged demo model and three random prompts."""
  directory = tmp_path_factory.mktemp("prompts")
  rng = np.random.default_rng(0)
  files = {}
  for name, length in (("one", 1), ("five", 5), ("twenty", 20)):
    files[name] = checkpoint_io.save_prompt_npy(rng.uniform(-0.5, 0.5, (length, 128)), str(directory / name))
  return demo.pretrained_checkpoint_path(), vocab.synthetic_vocabulary(), files


@pytest.fixture(scope="module")
def predictor(packaged):
  checkpoint, vocabulary, files = packaged
  return inference.Predictor.load(checkpoint, files, vocabulary=vocabulary, batch_size=8, max_input_length=12)


def _tokens(vocabulary, texts, length=12):
  return inference.make_batch([list(vocabulary.encode(t)) + [1] for t in texts], length).tokens


def test_make_batch_pads_masks_and_truncates_keeping_eos():
  batch = inference.make_batch([[5, 6, 1], [7, 8, 9, 10, 1]], length=4, batch_size=3)
  np.testing.assert_array_equal(batch.tokens, [[5, 6, 1, 0], [7, 8, 9, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(batch.mask, batch.tokens > 0)
  assert batch.truncated == (1,)


def test_set_and_get_prompt_round_trip():
  params = {"token_embedder": {"embedding": np.zeros((4, 3))}}
  prompt = np.arange(6, dtype=np.float32).reshape(2, 3)
  with_prompt = inference.set_prompt(params, prompt)
  np.testing.assert_array_equal(inference.get_prompt(with_prompt), prompt)
  assert inference.get_prompt(inference.set_prompt(with_prompt, None)) is None
  with pytest.raises(ValueError, match="the model needs \\[prompt_length, 3\\]"):
    inference.set_prompt(params, np.zeros((2, 5)))


def test_load_model_with_a_prompt_decodes_as_the_predictor_does(packaged, predictor):
  checkpoint, vocabulary, files = packaged
  model, params = inference.load_model(checkpoint, prompt=files["five"])
  assert model.prompt_factory is not None
  np.testing.assert_array_equal(inference.get_prompt(params), np.load(files["five"]))
  alone, _ = decoding.decode(model, params, _tokens(vocabulary, INPUTS), max_decode_length=DECODE_LENGTH)
  served = predictor.predict(INPUTS, prompt="five", max_decode_length=DECODE_LENGTH)
  assert [p.tokens for p in served] == [tuple(int(t) for t in row if t) for row in np.asarray(alone)]
  assert all(p.prompt == "five" for p in served)


def test_mixed_prompts_in_one_call_equal_each_prompt_alone(predictor):
  names = ["twenty", "one", "five", "twenty"]
  mixed = predictor.predict(INPUTS, prompt=names, max_decode_length=DECODE_LENGTH)
  for i, name in enumerate(names):
    alone = predictor.predict([INPUTS[i]], prompt=name, max_decode_length=DECODE_LENGTH)[0]
    assert mixed[i].tokens == alone.tokens
    np.testing.assert_allclose(mixed[i].score, alone.score, atol=1e-5)


def test_score_of_the_greedy_prediction_equals_its_decode_score(predictor):
  predictions = predictor.predict(INPUTS, prompt="five", max_decode_length=DECODE_LENGTH)
  scores = predictor.score(INPUTS, [p.tokens for p in predictions], prompt="five")
  np.testing.assert_allclose(scores, [p.score for p in predictions], atol=1e-4)


def test_rank_classify_picks_the_best_scored_candidate(predictor):
  candidates = ["a b", "f a d k", "c"]
  choices, scores = predictor.rank_classify(INPUTS, candidates, prompt="one")
  assert scores.shape == (len(INPUTS), len(candidates))
  for j, candidate in enumerate(candidates):
    np.testing.assert_allclose(scores[:, j], predictor.score(INPUTS, [candidate] * len(INPUTS), prompt="one"),
                               atol=1e-4)
  np.testing.assert_array_equal(choices, np.argmax(scores, axis=-1))


def test_a_prompt_from_a_training_checkpoint_loads(tmp_path, packaged):
  _, _, files = packaged
  prompt = np.load(files["five"])
  checkpoint_io.save_t5x_orbax({"encoder": {"prompt": {"prompt": {"prompt": prompt}}}}, str(tmp_path), step=7)
  np.testing.assert_array_equal(inference.load_prompt_source(str(tmp_path)), prompt)  # MODEL_DIR: the latest
  np.testing.assert_array_equal(inference.load_prompt_source(str(tmp_path / "checkpoint_7")), prompt)
  assert checkpointing.PROMPT_PATH == ("encoder", "prompt", "prompt", "prompt")


def test_prompt_for_another_model_size_is_refused(packaged, tmp_path):
  checkpoint, vocabulary, _ = packaged
  path = checkpoint_io.save_prompt_npy(np.zeros((3, 64)), str(tmp_path / "narrow.npy"))
  with pytest.raises(ValueError, match="has width 64, model embed dim is 128; re-export the prompt"):
    inference.Predictor.load(checkpoint, {"narrow": path}, vocabulary=vocabulary)


def test_empty_input_and_unknown_prompt_are_one_line_errors(predictor):
  with pytest.raises(ValueError, match="an input is empty"):
    predictor.predict(["  "], prompt="one")
  with pytest.raises(ValueError, match="no prompt named 'two' in the bank"):
    predictor.predict(["a b"], prompt="two")


def test_too_long_inputs_are_truncated_and_counted(predictor):
  before = predictor.truncated
  predictor.predict([" ".join("abcdefg" * 3)], prompt="one", max_decode_length=2)
  assert predictor.truncated == before + 1


def test_ensemble_of_copies_of_one_prompt_equals_that_prompt(packaged):
  checkpoint, vocabulary, files = packaged
  copies = {f"copy{k}": files["five"] for k in range(3)}
  predictor = inference.Predictor.load(checkpoint, copies, vocabulary=vocabulary, batch_size=12,
                                       max_input_length=12)
  result = ensemble.ensemble_predict(predictor, INPUTS, list(copies), max_decode_length=DECODE_LENGTH)
  alone = [p.prediction for p in predictor.predict(INPUTS, prompt="copy0", max_decode_length=DECODE_LENGTH)]
  assert list(result.answers) == alone and result.votes == (3,) * len(INPUTS)
  ranked = ensemble.ensemble_rank_classify(predictor, INPUTS, ["a b", "c"], list(copies))
  choices, _ = predictor.rank_classify(INPUTS, ["a b", "c"], prompt="copy0")
  assert list(ranked.answers) == [["a b", "c"][c] for c in choices]


def test_majority_vote_and_its_ties():
  answers = [["x", "a", "p"], ["y", "b", "q"], ["y", "a", "p"], ["x", "b", "r"]]
  winners, votes = ensemble.majority_vote(answers)
  # column 0: x 2, y 2 -> x (prompt 0 said it first); column 1: a 2, b 2 -> a; column 2: p 2.
  assert winners == ["x", "a", "p"] and votes == [2, 2, 2]
  assert ensemble.majority_vote([["u", "v"], ["w", "v"], ["w", "z"]]) == (["w", "v"], [2, 2])


def test_ensemble_needs_at_least_one_prompt(predictor):
  with pytest.raises(ValueError, match="K >= 1"):
    ensemble.ensemble_predict(predictor, INPUTS, [])


def test_ensemble_metrics_have_table_3_rows():
  result = ensemble.EnsembleResult(("p", "q"), (("a", "b"), ("a", "c")), ("a", "b"), (2, 1))
  metrics = ensemble.ensemble_metrics(result, ["a", "b"])
  assert metrics == {"p": 100.0, "q": 50.0, "mean": 75.0, "best": 100.0, "ensemble": 100.0}
  lines = ensemble.format_ensemble_table(metrics, ["p", "q"])
  assert [line.split()[0] for line in lines[2:]] == ["p", "q", "mean", "best", "ensemble"]


def test_rank_classify_scores_match_scoring_module(packaged):
  checkpoint, vocabulary, files = packaged
  model, params = inference.load_model(checkpoint, prompt=files["one"])
  candidates = scoring.candidate_tokens(vocabulary, ["a", "b c"])
  _, expected = scoring.rank_classify(model, params, _tokens(vocabulary, INPUTS), candidates)
  predictor = inference.Predictor(model, params, inference.PromptBank.from_prompts({"one": np.load(files["one"])}),
                                  vocabulary, batch_size=4, max_input_length=12)
  _, scores = predictor.rank_classify(INPUTS, ["a", "b c"])
  np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_gin_built_model_serves_after_gin_is_cleared(packaged):
  checkpoint, vocabulary, files = packaged
  demo.parse_demo_gin(demo.prompt_tuning_gin("uniform"), ["MODEL_DIR = '/unused'"])
  model = gin.get_configurable(Transformer)()
  gin.clear_config()
  predictor = inference.Predictor.load(checkpoint, {"one": files["one"]}, model=model, vocabulary=vocabulary,
                                       batch_size=2, max_input_length=12)
  assert len(predictor.predict(["a b"], max_decode_length=3)) == 1
  assert jnp.asarray(predictor.bank.prompts).shape == (1, 1, 128)


def test_a_gin_file_builds_the_model_and_gin_is_not_needed_after(packaged):
  checkpoint, vocabulary, files = packaged
  predictor = inference.Predictor.load(checkpoint, {"five": files["five"]}, model="demo/t5_1_1_demo.gin",
                                       vocabulary=vocabulary, batch_size=4, max_input_length=12)
  assert gin.config_str() == ""
  assert predictor.model.config.emb_dim == 128
  alone = predictor.predict(INPUTS, max_decode_length=DECODE_LENGTH)
  assert len(alone) == len(INPUTS) and all(p.prompt == "five" for p in alone)


def test_a_saved_prompt_reloads_to_the_same_predictions(packaged, predictor, tmp_path):
  checkpoint, vocabulary, files = packaged
  adapter = checkpoint_io.save_peft_adapter(np.load(files["twenty"]), str(tmp_path / "adapter"), num_layers=2,
                                            num_attention_heads=4)
  reloaded = inference.Predictor.load(checkpoint, {"twenty": adapter}, vocabulary=vocabulary, batch_size=8,
                                      max_input_length=12)
  expected = predictor.predict(INPUTS, prompt="twenty", max_decode_length=DECODE_LENGTH)
  assert reloaded.predict(INPUTS, max_decode_length=DECODE_LENGTH) == expected
