"""Prompt initializers (shape, range, meaning), gin wiring, and filling the prompt after a partial restore."""

import functools

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning_jax import prompts
from prompt_tuning_jax.model import Transformer, config_for_size

VOCAB, EMBED = 64, 16


class WordVocabulary:
  """A whitespace vocabulary: word w -> 10 + its index in WORDS (stands in for SentencePiece's encode)."""

  WORDS = ["positive", "negative", "neutral", "entail", "ment", "not", "the", "movie"]

  def encode(self, text):
    return [10 + self.WORDS.index(w) for w in text.split()]


@pytest.fixture
def embedding():
  return jnp.asarray(np.random.RandomState(0).normal(size=(VOCAB, EMBED)), jnp.float32)


def _rows_of(table, rows):
  """Index of each row in `table` (exact match), or -1."""
  table, rows = np.asarray(table), np.asarray(rows)
  matches = np.all(np.isclose(rows[:, None, :], table[None, :, :], atol=1e-6), axis=-1)
  return np.where(matches.any(axis=1), matches.argmax(axis=1), -1)


def test_uniform_is_centered_in_minus_half_to_half():
  prompt = prompts.uniform()(jax.random.PRNGKey(0), (200, EMBED))
  assert prompt.shape == (200, EMBED) and prompt.dtype == jnp.float32
  assert float(prompt.min()) >= -0.5 and float(prompt.max()) <= 0.5
  assert float(prompt.min()) < -0.45 and float(prompt.max()) > 0.45  # both signs, full range (not flax's [0, s))
  assert abs(float(prompt.mean())) < 0.02


def test_flax_uniform_is_the_reference_implementations_zero_to_half():
  key = jax.random.PRNGKey(0)
  prompt = prompts.flax_uniform()(key, (200, EMBED))
  np.testing.assert_array_equal(prompt, nn.initializers.uniform(0.5)(key, (200, EMBED), jnp.float32))
  assert float(prompt.min()) >= 0.0 and float(prompt.max()) < 0.5


def test_sampled_vocab_rows_are_distinct_embeddings_from_the_population(embedding):
  prompt = prompts.from_sampled_vocab(population_size=20)(jax.random.PRNGKey(1), (12, EMBED), embedding)
  ids = _rows_of(embedding, prompt)
  assert prompt.shape == (12, EMBED)
  assert np.all(ids >= 0) and np.all(ids < 20)
  assert len(set(ids.tolist())) == 12


def test_sampled_vocab_refuses_more_rows_than_the_population(embedding):
  with pytest.raises(ValueError, match="cannot sample 30 distinct prompt rows from a population of 20"):
    prompts.from_sampled_vocab(population_size=20)(jax.random.PRNGKey(1), (30, EMBED), embedding)


def test_class_label_rows_are_mean_sub_token_embeddings(embedding):
  vocab = WordVocabulary()
  labels = ["positive", "entail ment", "not entail ment"]
  prompt = prompts.from_class_labels(labels, vocab, population_size=10)(jax.random.PRNGKey(2), (6, EMBED),
                                                                         embedding)
  assert prompt.shape == (6, EMBED)
  for i, label in enumerate(labels):
    expected = np.mean(np.asarray(embedding)[vocab.encode(label)], axis=0)
    np.testing.assert_allclose(prompt[i], expected, rtol=1e-6)
  rest = _rows_of(embedding, prompt[3:])
  assert np.all(rest >= 0) and np.all(rest < 10)  # filled by sampled vocabulary


def test_class_labels_must_fit_the_prompt(embedding):
  init = prompts.from_class_labels(["positive", "negative", "neutral"], WordVocabulary())
  with pytest.raises(ValueError, match="3 class labels do not fit a prompt of length 2"):
    init(jax.random.PRNGKey(0), (2, EMBED), embedding)


def test_text_init_tiles_and_truncates(embedding):
  vocab = WordVocabulary()
  ids = vocab.encode("the movie not")
  long = prompts.from_text("the movie not", vocab)(jax.random.PRNGKey(0), (7, EMBED), embedding)
  np.testing.assert_array_equal(_rows_of(embedding, long), [ids[i % 3] for i in range(7)])
  short = prompts.from_text("the movie not", vocab)(jax.random.PRNGKey(0), (2, EMBED), embedding)
  np.testing.assert_array_equal(_rows_of(embedding, short), ids[:2])


def test_token_ids_beyond_the_embedding_are_refused():
  small = jnp.zeros((12, EMBED))
  with pytest.raises(ValueError, match="has token id 17 but the embedding has 12 rows"):
    prompts.from_text("movie", WordVocabulary())(jax.random.PRNGKey(0), (3, EMBED), small)


def test_file_init_loads_a_saved_prompt_and_checks_its_shape(tmp_path):
  saved = np.random.RandomState(3).normal(size=(4, EMBED)).astype(np.float32)
  np.save(tmp_path / "prompt.npy", saved)
  loaded = prompts.from_file(tmp_path / "prompt.npy")(jax.random.PRNGKey(0), (4, EMBED))
  np.testing.assert_array_equal(loaded, saved)
  with pytest.raises(ValueError, match="prompt"):
    prompts.from_file(tmp_path / "prompt.npy")(jax.random.PRNGKey(0), (4, EMBED + 1))


def test_missing_prompt_is_initialized_from_the_restored_embedding():
  config = config_for_size("tiny")
  model = Transformer(config, prompt_factory=functools.partial(
      prompts.PrefixPrompt, length=6, init=prompts.from_sampled_vocab(population_size=50)))
  tokens = jnp.ones((1, 4), jnp.int32)
  params = nn.meta.unbox(jax.jit(functools.partial(model.init, enable_dropout=False))(
      jax.random.PRNGKey(0), tokens, tokens, tokens)["params"])
  # "Restore" a different (pretrained) embedding and drop the prompt, as a partial restore does.
  restored = jnp.asarray(np.random.RandomState(7).normal(size=(config.vocab_size, config.emb_dim)), jnp.float32)
  frozen = {**params, "token_embedder": {"embedding": restored},
            "encoder": {k: v for k, v in params["encoder"].items() if k != "prompt"}}
  full = prompts.init_missing_params(model, frozen, jax.random.PRNGKey(4))
  prompt = full["encoder"]["prompt"]["prompt"]["prompt"]
  ids = _rows_of(restored, prompt)
  assert np.all(ids >= 0) and np.all(ids < 50)
  np.testing.assert_array_equal(full["token_embedder"]["embedding"], restored)  # restored params are kept


def _uniform_rows(prompt, embedding):
  assert np.all(np.abs(prompt) <= 0.5) and np.std(prompt) > 0.1  # U(-0.5, 0.5), not a constant


def _sampled_rows(prompt, embedding):
  ids = _rows_of(embedding, prompt)
  assert np.all((ids >= 0) & (ids < 100)) and len(set(ids)) == len(ids)  # distinct rows of the first 100


def _class_label_rows(prompt, embedding):  # 'positive' -> id 10, 'negative' -> id 11, then sampled vocabulary
  np.testing.assert_array_equal(prompt[:2], embedding[[10, 11]])
  assert np.all(_rows_of(embedding, prompt[2:]) >= 0)


def _text_rows(prompt, embedding):  # 'the movie' -> ids 16, 17, tiled over 7 rows
  np.testing.assert_array_equal(prompt, embedding[[16, 17, 16, 17, 16, 17, 16]])


def _flax_uniform_rows(prompt, embedding):
  assert np.all((prompt >= 0) & (prompt < 0.5)) and np.std(prompt) > 0.05  # the reference's U[0, 0.5)


@pytest.mark.parametrize("init_file,bindings,check", [
    ("from_uniform.gin", [], _uniform_rows),
    ("from_flax_uniform.gin", [], _flax_uniform_rows),
    ("from_sampled_vocab.gin", ["prompts.from_sampled_vocab.population_size = 100"], _sampled_rows),
    ("from_class_labels.gin", ["CLASS_LABELS = ['positive', 'negative']", "VOCABULARY = @WordVocabulary()"],
     _class_label_rows),
    ("from_text.gin", ["PROMPT_INIT_TEXT = 'the movie'", "VOCABULARY = @WordVocabulary()"], _text_rows),
], ids=["uniform", "flax_uniform", "sampled_vocab", "class_labels", "text"])
def test_each_prompt_gin_file_builds_a_prompted_model(init_file, bindings, check):
  gin.clear_config()
  gin.external_configurable(WordVocabulary)
  try:
    gin.parse_config_files_and_bindings(
        ["gin_configs/models/t5_1_1_tiny.gin", "gin_configs/models/prompt.gin", f"gin_configs/prompts/{init_file}"],
        ["PROMPT_LENGTH = 7", *bindings])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    tokens = jnp.ones((1, 4), jnp.int32)
    variables = jax.jit(functools.partial(model.init, enable_dropout=False))(
        jax.random.PRNGKey(0), tokens, tokens, tokens)
  finally:
    gin.clear_config()
  params = nn.meta.unbox(variables)["params"]
  prompt = np.asarray(params["encoder"]["prompt"]["prompt"]["prompt"])
  assert prompt.shape == (7, 32)
  check(prompt, np.asarray(params["token_embedder"]["embedding"]))


def test_class_label_init_through_the_run_gin_default_path_embeds_the_tasks_sentencepiece_labels():
  """prompt_finetune.gin's defaults: VOCABULARY and CLASS_LABELS come from the task (RTE), here with a real
  SentencePiece model; rows 0 and 1 are the mean embeddings of its pieces of 'entailment' and 'not_entailment'."""
  import sentencepiece as spm
  from _data_helpers import TEST_EXTRA_IDS, sentencepiece_model

  from prompt_tuning_jax.training import cli

  path = sentencepiece_model()
  gin.clear_config()
  try:
    cli.parse_gin(["models/t5_1_1_tiny.gin", "models/prompt.gin", "prompts/from_class_labels.gin",
                   "runs/prompt_finetune.gin"],
                  ["MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_NAME = 'taskless_super_glue_rte_v102'",
                   "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}", "INITIAL_CHECKPOINT_PATH = None",
                   "PROMPT_LENGTH = 5", "config.T5Config.vocab_size = 256",
                   f"t5_vocabulary.sentencepiece_model_file = '{path}'",
                   f"t5_vocabulary.extra_ids = {TEST_EXTRA_IDS}"], [])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    tokens = jnp.ones((1, 4), jnp.int32)
    params = nn.meta.unbox(jax.jit(functools.partial(model.init, enable_dropout=False))(
        jax.random.PRNGKey(0), tokens, tokens, tokens)["params"])
  finally:
    gin.clear_config()
  embedding = np.asarray(params["token_embedder"]["embedding"])
  prompt = np.asarray(params["encoder"]["prompt"]["prompt"]["prompt"])
  pieces = [spm.SentencePieceProcessor(model_file=path).encode(label) for label in ("entailment", "not_entailment")]
  assert len(pieces[1]) > 1  # a label of several pieces: the row is their mean
  for row, ids in enumerate(pieces):
    np.testing.assert_allclose(prompt[row], embedding[ids].mean(axis=0), rtol=1e-6, atol=1e-7)
  assert np.all(_rows_of(embedding, prompt[2:]) >= 0)  # the other rows are sampled vocabulary
