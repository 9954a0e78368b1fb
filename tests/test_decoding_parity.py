"""Decoding a PEFT prompt-tuned Hugging Face T5 1.1: our greedy and beam search against `generate` (the same tiny
random model and prompt, loaded through checkpoints.load_params and prompt_files.load_prompt).

Beam search semantics made equal: t5x's alpha = 0 and HF's length_penalty = 0 both rank by raw log-likelihood.
Two rules still differ, and the beam test's model was chosen so that neither shows (the test asserts finished and
length-limited beams both occur): HF lets an EOS extension finish only if it ranks among the top num_beams of the
2 * num_beams candidates of its step (t5x: any of them), and HF ranks the beams cut at max_new_tokens together
with the finished ones (t5x and we: after them). Whatever the data, every sequence t5x's rules return beats or
equals HF's best, which the second beam test checks.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from _optional import optional, parity_marks

from prompt_tuning_jax import prompts
from prompt_tuning_jax.checkpoints import load_params
from prompt_tuning_jax.checkpoints.prompt_files import load_prompt
from prompt_tuning_jax.inference import decoding
from prompt_tuning_jax.model import T5Config, Transformer

torch, transformers, peft = optional("torch"), optional("transformers"), optional("peft")
pytestmark = parity_marks("torch", "transformers", "peft")

EOS, LENGTH, PROMPT_LENGTH = 1, 10, 5
# 6 heads x 8 = 48 != d_model 32. Equal encoder and decoder depths: transformers 4.57's T5 `generate` (with or
# without PEFT) sizes its cache by num_layers and fails with an IndexError on a deeper decoder.
HF_CONFIG = dict(vocab_size=80, d_model=32, d_kv=8, num_heads=6, d_ff=40, num_layers=2, num_decoder_layers=2,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """(PEFT model, our model, our params) of one random T5 1.1 and one random prompt."""
  tmp = tmp_path_factory.mktemp("hf_decoding")
  torch.manual_seed(0)
  config = transformers.T5Config(**HF_CONFIG, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS)
  hf = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    hf.lm_head.weight.normal_(0.0, 0.5)  # untied, distinct from the embedding
    # EOS scores 1.05 x token 65: the model ends where it would have said 65, so some beams finish early.
    hf.lm_head.weight[EOS] = 1.05 * hf.lm_head.weight[65]
  hf.save_pretrained(tmp / "model", safe_serialization=True)
  peft_model = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM",
                                                                num_virtual_tokens=PROMPT_LENGTH))
  with torch.no_grad():
    peft_model.prompt_encoder["default"].embedding.weight.normal_(0.0, 1.0)
  peft_model.save_pretrained(tmp / "adapter")
  peft_model.eval()

  params, inferred = load_params(str(tmp / "model"))
  prompt = load_prompt(tmp / "adapter", length=PROMPT_LENGTH, embed_dim=inferred["emb_dim"])
  params = {**params, "encoder": {**params["encoder"], "prompt": {"prompt": {"prompt": jnp.asarray(prompt)}}}}
  model = Transformer(T5Config(**inferred), prompt_factory=functools.partial(prompts.PrefixPrompt,
                                                                             length=PROMPT_LENGTH))
  return peft_model, model, params


@pytest.fixture(scope="module")
def inputs():
  tokens = np.random.RandomState(0).randint(2, HF_CONFIG["vocab_size"], (4, 9))
  tokens[0, 5:] = 0
  tokens[2, 7:] = 0
  return tokens


def _generate(peft_model, inputs, **kwargs):
  with torch.no_grad():
    return peft_model.generate(input_ids=torch.tensor(inputs), attention_mask=torch.tensor(inputs > 0).long(),
                               max_new_tokens=LENGTH, do_sample=False, **kwargs)


def _as_ours(sequences):
  """HF sequences [n, 1 + generated] -> ours [n, LENGTH]: no start token, 0 after the first EOS."""
  tokens = np.asarray(sequences)[:, 1:]
  after_eos = np.cumsum(np.cumsum(tokens == EOS, axis=1), axis=1) > 1
  tokens = np.where(after_eos, 0, tokens)
  return np.pad(tokens, ((0, 0), (0, LENGTH - tokens.shape[1])))


def test_greedy_decoding_equals_peft_generate(models, inputs):
  peft_model, model, params = models
  reference = _as_ours(_generate(peft_model, inputs, num_beams=1).numpy())
  ends = np.array([EOS in row for row in reference])
  assert ends.any() and not ends.all()  # EOS-terminated and length-limited rows
  tokens, _ = decoding.decode(model, params, inputs, max_decode_length=LENGTH)
  np.testing.assert_array_equal(tokens, reference)


def _beams(peft_model, inputs, num_beams):
  out = _generate(peft_model, inputs, num_beams=num_beams, num_return_sequences=num_beams, length_penalty=0.0,
                  early_stopping=False, output_scores=True, return_dict_in_generate=True)
  return (_as_ours(out.sequences.numpy()).reshape(len(inputs), num_beams, LENGTH),
          out.sequences_scores.numpy().reshape(len(inputs), num_beams))


def test_beam_search_without_length_penalty_equals_peft_generate(models, inputs):
  peft_model, model, params = models
  reference, reference_scores = _beams(peft_model, inputs, num_beams=2)
  tokens, scores = decoding.decode(model, params, inputs, max_decode_length=LENGTH, method="beam", num_beams=2,
                                   alpha=0.0)
  finished = np.asarray((tokens == EOS).any(-1))
  assert finished.any() and not finished.all()
  np.testing.assert_array_equal(tokens, reference)
  np.testing.assert_allclose(scores, reference_scores, rtol=1e-4)


def test_beam_search_best_is_at_least_as_likely_as_peft_generate_best(models, inputs):
  peft_model, model, params = models
  reference, reference_scores = _beams(peft_model, inputs, num_beams=4)
  tokens, scores = decoding.decode(model, params, inputs, max_decode_length=LENGTH, method="beam", num_beams=4,
                                   alpha=0.0)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  for row in range(len(inputs)):
    assert scores[row, 0] >= reference_scores[row, 0] - 1e-4
    for beam, score in zip(reference[row], reference_scores[row], strict=True):  # shared beams score alike
      same = (tokens[row] == beam).all(-1)
      if same.any():
        np.testing.assert_allclose(scores[row, np.argmax(same)], score, rtol=1e-4)
