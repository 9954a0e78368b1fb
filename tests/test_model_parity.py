"""Numerical parity with the reference implementations: Hugging Face T5 1.1 logits, PEFT prompt-tuning loss/grad."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _optional import needs, optional, parity_marks

from prompt_tuning_jax import prompts
from prompt_tuning_jax.checkpoints import load_params
from prompt_tuning_jax.checkpoints.prompt_files import load_prompt
from prompt_tuning_jax.model import T5Config, Transformer

torch, transformers, peft = optional("torch"), optional("transformers"), optional("peft")
pytestmark = parity_marks("torch", "transformers")

# Two T5 1.1 shapes: heads x d_kv equal to d_model, and not (6 x 8 = 48 != 32); decoder deeper than encoder.
HF_CONFIGS = {
    "square": dict(vocab_size=96, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128),
    "wide_heads": dict(vocab_size=80, d_model=32, d_kv=8, num_heads=6, d_ff=40, num_layers=2, num_decoder_layers=3,
                       relative_attention_num_buckets=8, relative_attention_max_distance=20),
}


def _hf_model(tmp_path, name):
  torch.manual_seed(0)
  config = transformers.T5Config(**HF_CONFIGS[name], feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():  # random lm_head distinct from the embedding (T5 1.1 is untied)
    model.lm_head.weight.normal_(0.0, 0.5)
  path = tmp_path / name
  model.save_pretrained(path, safe_serialization=True)
  return model, str(path)


def _inputs(vocab, seed=0, batch=3, source=30, target=12):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, (batch, source))
  enc[0, 20:] = 0
  enc[1, 5:] = 0
  tgt = rng.randint(2, vocab, (batch, target))
  tgt[0, 8:] = 0
  dec = np.concatenate([np.zeros((batch, 1), np.int64), tgt[:, :-1]], axis=1)
  return enc, dec, tgt


def _max_relative_error(ours, ref):
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_logits_equal_huggingface_t5_1_1(tmp_path, name):
  hf, path = _hf_model(tmp_path, name)
  params, inferred = load_params(path)
  config = T5Config(**inferred)
  enc, dec, tgt = _inputs(config.vocab_size)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
             decoder_input_ids=torch.tensor(dec)).logits.numpy()
  ours = np.asarray(jax.jit(functools.partial(Transformer(config).apply, enable_dropout=False))(
      {"params": params}, jnp.asarray(enc), jnp.asarray(dec), jnp.asarray(tgt)))
  real = tgt > 0  # padded target rows are never scored
  assert _max_relative_error(ours[real], ref[real]) < 1e-5


@needs("peft")
def test_peft_prompt_tuning_loss_and_prompt_gradient_equal_ours(tmp_path):
  hf, path = _hf_model(tmp_path, "wide_heads")
  length = 5
  peft_model = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=length))
  with torch.no_grad():  # a non-trivial prompt
    peft_model.prompt_encoder["default"].embedding.weight.normal_(0.0, 1.0)
  peft_model.save_pretrained(tmp_path / "adapter")

  enc, _, tgt = _inputs(80)
  labels = np.where(tgt > 0, tgt, -100)
  peft_model.train(False)
  out = peft_model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
                   labels=torch.tensor(labels))
  out.loss.backward()
  ref_loss = float(out.loss.detach())
  ref_grad = peft_model.prompt_encoder["default"].embedding.weight.grad.numpy()[:length]  # encoder rows

  params, inferred = load_params(path)
  prompt = load_prompt(tmp_path / "adapter", length=length, embed_dim=inferred["emb_dim"])
  model = Transformer(T5Config(**inferred),
                      prompt_factory=functools.partial(prompts.PrefixPrompt, length=length))
  dec = np.concatenate([np.zeros((tgt.shape[0], 1), np.int64), tgt[:, :-1]], axis=1)
  weights = jnp.asarray(tgt > 0, jnp.float32)

  def loss_fn(prompt):
    full = {**params, "encoder": {**params["encoder"], "prompt": {"prompt": {"prompt": prompt}}}}
    logits = model.apply({"params": full}, jnp.asarray(enc), jnp.asarray(dec), jnp.asarray(tgt),
                         enable_dropout=False)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(tgt))
    return jnp.sum(per_token * weights) / jnp.sum(weights)  # HF's mean over labels != -100

  loss, grad = jax.jit(jax.value_and_grad(loss_fn))(jnp.asarray(prompt))
  assert abs(float(loss) - ref_loss) / abs(ref_loss) < 1e-4
  assert _max_relative_error(np.asarray(grad), ref_grad) < 1e-4
