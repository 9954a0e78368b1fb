"""Prompt files: .npy, the reference numpy_checkpoints export, and PEFT prompt-tuning adapters."""

import json
import os

import numpy as np
import pytest
from _optional import needs, optional
from safetensors.numpy import load_file, save_file

from prompt_tuning_jax.checkpoints import (
  export_numpy_checkpoint,
  load_prompt,
  save_peft_adapter,
  save_prompt_npy,
)

torch, transformers, peft = optional("torch"), optional("transformers"), optional("peft")
P, EMBED = 5, 32


def random_prompt(seed=0, length=P, dtype=np.float32):
  return np.random.default_rng(seed).normal(size=(length, EMBED)).astype(dtype)


def t5_model():
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=64, d_model=EMBED, d_kv=8, num_heads=6, d_ff=48, num_layers=2,
                                 num_decoder_layers=3, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 decoder_start_token_id=0, dropout_rate=0.0)
  return transformers.T5ForConditionalGeneration(config).eval()


def peft_prompt_rows(model):
  return model.prompt_encoder["default"].embedding.weight.detach().numpy()


def test_npy_round_trip_is_exact(tmp_path):
  prompt = random_prompt()
  path = save_prompt_npy(prompt, tmp_path / "prompt.npy")
  loaded = load_prompt(path, length=P, embed_dim=EMBED)
  assert loaded.dtype == np.float32
  np.testing.assert_array_equal(loaded, prompt)


def test_float64_npy_loads_as_float32(tmp_path):
  prompt = random_prompt(dtype=np.float64)
  np.save(tmp_path / "prompt.npy", prompt)
  loaded = load_prompt(tmp_path / "prompt.npy")
  assert loaded.dtype == np.float32
  np.testing.assert_array_equal(loaded, prompt.astype(np.float32))


def test_save_prompt_npy_writes_exactly_the_given_path(tmp_path):
  save_prompt_npy(random_prompt(), tmp_path / "my_prompt")
  assert os.listdir(tmp_path) == ["my_prompt"]


def test_numpy_checkpoint_export_uses_the_reference_layout(tmp_path):
  prompt = random_prompt()
  path = export_numpy_checkpoint(prompt, tmp_path, step=1200)
  assert path == os.path.join(tmp_path, "numpy_checkpoints", "checkpoint_1200", "encoder.prompt.prompt.prompt")
  assert np.load(path, allow_pickle=False).dtype == np.float32  # a plain .npy under a suffix-less name
  np.testing.assert_array_equal(load_prompt(path, length=P, embed_dim=EMBED), prompt)


@needs("torch", "transformers", "peft")
def test_peft_adapter_gives_the_encoder_prompt_rows(tmp_path):
  model = peft.get_peft_model(t5_model(), peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P))
  rows = peft_prompt_rows(model)
  assert rows.shape == (2 * P, EMBED)  # encoder and decoder halves
  model.save_pretrained(tmp_path)
  np.testing.assert_array_equal(load_prompt(tmp_path, length=P, embed_dim=EMBED), rows[:P])


@needs("torch", "transformers", "peft")
def test_save_peft_adapter_loads_in_peft_with_equal_prompt_embeddings(tmp_path):
  prompt = random_prompt()
  save_peft_adapter(prompt, tmp_path, num_layers=2, num_attention_heads=6, base_model_name_or_path="tiny-t5")
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == P and config["token_dim"] == EMBED
  model = peft.PeftModel.from_pretrained(t5_model(), str(tmp_path))
  np.testing.assert_array_equal(peft_prompt_rows(model), np.concatenate([prompt, prompt]))
  np.testing.assert_array_equal(load_prompt(tmp_path, length=P, embed_dim=EMBED), prompt)


@needs("torch", "transformers", "peft")
def test_peft_feeds_only_the_first_prompt_rows_to_a_seq2seq_model(tmp_path):
  # The module docstring's claim about PEFT: for PROMPT_TUNING rows [P:] are never read.
  prompt = random_prompt()
  save_peft_adapter(prompt, tmp_path, num_layers=2, num_attention_heads=6)
  tensors = load_file(tmp_path / "adapter_model.safetensors")
  tensors["prompt_embeddings"][P:] = 100.0  # a decoder half that would wreck any output it reached
  save_file(tensors, tmp_path / "adapter_model.safetensors", metadata={"format": "pt"})
  base = t5_model()
  model = peft.PeftModel.from_pretrained(base, str(tmp_path))
  ids = torch.tensor([[5, 9, 13, 2, 1]])
  labels = torch.tensor([[7, 3, 1]])
  with torch.no_grad():
    peft_logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).logits
    embeds = torch.cat([torch.from_numpy(prompt)[None], base.get_input_embeddings()(ids)], dim=1)
    with model.disable_adapter():
      direct_logits = base(inputs_embeds=embeds, attention_mask=torch.ones(1, P + 5), labels=labels).logits
  np.testing.assert_allclose(peft_logits.numpy(), direct_logits.numpy(), atol=1e-5)


def test_prompt_of_the_wrong_width_is_refused_with_the_fix(tmp_path):
  path = save_prompt_npy(random_prompt(), tmp_path / "prompt.npy")
  with pytest.raises(ValueError, match=f"prompt file {path} has width 32, model embed dim is 768; re-export the "
                                       "prompt for this model size$"):
    load_prompt(path, length=P, embed_dim=768)


def test_prompt_of_the_wrong_length_is_refused_with_the_fix(tmp_path):
  path = save_prompt_npy(random_prompt(), tmp_path / "prompt.npy")
  with pytest.raises(ValueError, match="has length 5, the model's prompt length is 100; set the prompt length to 5"):
    load_prompt(path, length=100, embed_dim=EMBED)


def test_npy_that_needs_pickle_is_refused(tmp_path):
  np.save(tmp_path / "prompt.npy", np.array([random_prompt()], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match="holds an object array, which this package will not unpickle"):
    load_prompt(tmp_path / "prompt.npy")


def test_missing_prompt_file_is_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match="prompt file .*/absent.npy does not exist"):
    load_prompt(tmp_path / "absent.npy")


def test_adapter_of_another_peft_type_is_refused(tmp_path):
  save_peft_adapter(random_prompt(), tmp_path, num_layers=2, num_attention_heads=6)
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
  with pytest.raises(ValueError, match="peft_type 'LORA'; only PROMPT_TUNING adapters"):
    load_prompt(tmp_path)


def test_adapter_without_prompt_embeddings_names_the_missing_key(tmp_path):
  save_peft_adapter(random_prompt(), tmp_path, num_layers=2, num_attention_heads=6)
  save_file({"other": np.zeros((10, EMBED), np.float32)}, tmp_path / "adapter_model.safetensors")
  with pytest.raises(ValueError, match="has no 'prompt_embeddings' tensor"):
    load_prompt(tmp_path)


def test_adapter_rows_disagreeing_with_its_config_are_refused(tmp_path):
  save_peft_adapter(random_prompt(), tmp_path, num_layers=2, num_attention_heads=6)
  save_file({"prompt_embeddings": np.zeros((7, EMBED), np.float32)}, tmp_path / "adapter_model.safetensors")
  with pytest.raises(ValueError, match=r"has shape \(7, 32\), but adapter_config.json says 5 virtual tokens x 2"):
    load_prompt(tmp_path)
