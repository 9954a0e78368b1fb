"""Hugging Face T5 1.1 directories: reading into T5X names, writing back, and refusing what is not T5 1.1."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _optional import optional, parity_marks
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from prompt_tuning_jax.checkpoints import load_hf_t5, load_params, merge_frozen, save_hf_t5
from prompt_tuning_jax.model import T5Config, Transformer

torch, transformers = optional("torch"), optional("transformers")
pytestmark = parity_marks("torch", "transformers")

HF_FIELDS = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)


def hf_model(num_heads=6, **overrides):
  """A tiny random T5 1.1; 6 heads x 8 = 48 differs from d_model 32, so transposes show in the shapes."""
  torch.manual_seed(0)
  config = transformers.T5Config(**{**HF_FIELDS, "num_heads": num_heads, **overrides})
  return transformers.T5ForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(model, directory) of a tiny T5 1.1 written by save_pretrained."""
  model = hf_model()
  directory = str(tmp_path_factory.mktemp("hf") / "t5")
  model.save_pretrained(directory)
  return model, directory


def torch_tensors(model):
  return {name: value.detach().numpy() for name, value in model.state_dict().items()}


def test_every_array_equals_its_torch_tensor_transposed_per_the_table(saved):
  model, directory = saved
  params, _ = load_hf_t5(directory)
  flat = traverse_util.flatten_dict(params, sep="/")
  hf = torch_tensors(model)
  expected = {
      "token_embedder/embedding": hf["shared.weight"],
      "decoder/logits_dense/kernel": hf["lm_head.weight"].T,
      "encoder/encoder_norm/scale": hf["encoder.final_layer_norm.weight"],
      "decoder/decoder_norm/scale": hf["decoder.final_layer_norm.weight"],
      "encoder/relpos_bias/rel_embedding": hf["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T,
      "decoder/relpos_bias/rel_embedding": hf["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T,
  }
  for i in range(2):
    block = f"encoder.block.{i}.layer"
    for t5x_name, hf_name in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
      expected[f"encoder/layers_{i}/attention/{t5x_name}/kernel"] = hf[f"{block}.0.SelfAttention.{hf_name}.weight"].T
    for wi in ("wi_0", "wi_1", "wo"):
      expected[f"encoder/layers_{i}/mlp/{wi}/kernel"] = hf[f"{block}.1.DenseReluDense.{wi}.weight"].T
    expected[f"encoder/layers_{i}/pre_attention_layer_norm/scale"] = hf[f"{block}.0.layer_norm.weight"]
    expected[f"encoder/layers_{i}/pre_mlp_layer_norm/scale"] = hf[f"{block}.1.layer_norm.weight"]
  for i in range(3):
    block = f"decoder.block.{i}.layer"
    for t5x_name, hf_name in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
      expected[f"decoder/layers_{i}/self_attention/{t5x_name}/kernel"] = hf[f"{block}.0.SelfAttention.{hf_name}.weight"].T
      expected[f"decoder/layers_{i}/encoder_decoder_attention/{t5x_name}/kernel"] = hf[
          f"{block}.1.EncDecAttention.{hf_name}.weight"].T
    for wi in ("wi_0", "wi_1", "wo"):
      expected[f"decoder/layers_{i}/mlp/{wi}/kernel"] = hf[f"{block}.2.DenseReluDense.{wi}.weight"].T
    expected[f"decoder/layers_{i}/pre_self_attention_layer_norm/scale"] = hf[f"{block}.0.layer_norm.weight"]
    expected[f"decoder/layers_{i}/pre_cross_attention_layer_norm/scale"] = hf[f"{block}.1.layer_norm.weight"]
    expected[f"decoder/layers_{i}/pre_mlp_layer_norm/scale"] = hf[f"{block}.2.layer_norm.weight"]
  assert sorted(flat) == sorted(expected)
  for name, value in expected.items():
    assert flat[name].dtype == np.float32
    np.testing.assert_array_equal(flat[name], value, err_msg=name)
  assert flat["encoder/layers_0/attention/query/kernel"].shape == (32, 48)  # [embed, heads * head_dim]
  assert flat["encoder/relpos_bias/rel_embedding"].shape == (6, 32)  # [heads, buckets]


def test_config_fields_come_from_config_json_and_the_arrays(saved):
  _, directory = saved
  _, fields = load_params(directory)
  assert fields == dict(vocab_size=64, emb_dim=32, num_heads=6, head_dim=8, mlp_dim=48, num_encoder_layers=2,
                        num_decoder_layers=3, relative_attention_num_buckets=32,
                        relative_attention_max_distance=128, layer_norm_epsilon=1e-6)


def test_vocab_size_comes_from_the_embedding_not_config_json(saved, tmp_path):
  # lm-adapt checkpoints say 32100 in config.json while shared.weight has 32128 rows.
  model, _ = saved
  model.save_pretrained(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 60}))
  assert load_hf_t5(str(tmp_path))[1]["vocab_size"] == 64


def test_sharded_safetensors_load_like_a_single_file(saved, tmp_path):
  model, directory = saved
  model.save_pretrained(tmp_path, max_shard_size="40KB")
  assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
  sharded, single = load_hf_t5(str(tmp_path))[0], load_hf_t5(directory)[0]
  jax.tree_util.tree_map(np.testing.assert_array_equal, sharded, single)


def test_hf_params_fit_the_jax_model_parameter_tree(saved):
  _, directory = saved
  params, fields = load_params(directory)
  model = Transformer(T5Config(**fields))
  tokens = jnp.ones((1, 4), jnp.int32)
  abstract = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                                             enable_dropout=False)["params"]))
  merged = merge_frozen(abstract, params, directory)
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(abstract)


def test_save_hf_t5_writes_what_transformers_loads_with_equal_tensors(saved, tmp_path):
  model, directory = saved
  params, fields = load_params(directory)
  save_hf_t5(params, T5Config(**fields), str(tmp_path))
  reloaded, info = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
  assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
  original, written = torch_tensors(model), torch_tensors(reloaded)
  assert sorted(original) == sorted(written)
  for name, value in original.items():
    np.testing.assert_array_equal(written[name], value, err_msg=name)
  assert reloaded.config.num_decoder_layers == 3 and reloaded.config.d_kv == 8 and reloaded.config.num_heads == 6
  assert reloaded.config.tie_word_embeddings is False and reloaded.config.decoder_start_token_id == 0


def test_save_hf_t5_refuses_params_with_a_prompt(saved, tmp_path):
  _, directory = saved
  params, fields = load_params(directory)
  params["encoder"]["prompt"] = {"prompt": {"prompt": np.zeros((5, 32), np.float32)}}
  with pytest.raises(ValueError, match="encoder/prompt/prompt/prompt, which Hugging Face T5 has no name for; "
                                       "export a prompt with prompt_files.save_peft_adapter"):
    save_hf_t5(params, T5Config(**fields), str(tmp_path))


def test_pytorch_model_bin_alone_is_refused_with_the_conversion(saved, tmp_path):
  model, _ = saved
  model.save_pretrained(tmp_path, safe_serialization=False)
  assert (tmp_path / "pytorch_model.bin").exists()
  with pytest.raises(ValueError) as e:
    load_params(tmp_path)
  assert "\n" not in str(e.value)
  assert "holds only pytorch_model.bin, a pickle" in str(e.value)
  assert "save_pretrained(dir, safe_serialization=True)" in str(e.value)


def test_a_safetensors_file_missing_a_key_names_the_key(saved, tmp_path):
  model, _ = saved
  model.save_pretrained(tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  del tensors["decoder.block.2.layer.1.EncDecAttention.v.weight"]
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError, match="has no tensor decoder.block.2.layer.1.EncDecAttention.v.weight "
                                       r"\(T5X decoder/layers_2/encoder_decoder_attention/value/kernel\)"):
    load_hf_t5(str(tmp_path))


def test_extra_tensors_are_refused(saved, tmp_path):
  model, _ = saved
  model.save_pretrained(tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  tensors["encoder.block.2.layer.0.layer_norm.weight"] = np.ones(32, np.float32)
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError, match="holds 1 tensors a T5 1.1 with 2\\+3 layers does not have "
                                       r"\(e.g. encoder.block.2.layer.0.layer_norm.weight\)"):
    load_hf_t5(str(tmp_path))


def test_t5_v1_0_relu_mlp_is_refused(tmp_path):
  hf_model(feed_forward_proj="relu").save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="feed_forward_proj 'relu'.*this package implements T5 1.1"):
    load_params(tmp_path)


def test_tied_output_embedding_is_refused(tmp_path):
  hf_model(tie_word_embeddings=True).save_pretrained(tmp_path)
  assert "lm_head.weight" not in load_file(os.path.join(tmp_path, "model.safetensors"))
  with pytest.raises(ValueError, match="ties the output projection to the token embedding.*untied lm_head"):
    load_params(tmp_path)
