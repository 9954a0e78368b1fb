"""T5X checkpoints (legacy msgpack + zarr, orbax), format detection, and checking loaded params against a model."""

import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import serialization, traverse_util

from prompt_tuning_jax.checkpoints import (
  check_config,
  checkpoint_step,
  infer_config,
  load_param,
  load_params,
  load_t5x_legacy,
  load_t5x_orbax,
  merge_frozen,
  save_t5x_legacy,
  save_t5x_orbax,
  t5x,
)
from prompt_tuning_jax.model.config import T5Config, config_for_size

# heads x head_dim (6 x 8 = 48) differs from emb_dim (32) on purpose.
CONFIG = T5Config(vocab_size=64, emb_dim=32, num_heads=6, head_dim=8, mlp_dim=48, num_encoder_layers=2,
                  num_decoder_layers=3)
# Small enough that kernels go to zarr and are split into several chunks; norms and relpos tables stay inline.
INLINE_THRESHOLD = 200
CHUNK_BYTES = 1024


def t5x_tree(config: T5Config, leaf) -> dict:
  """A T5 1.1 parameter tree with T5X names and shapes; `leaf(*shape)` makes each array."""
  e, qkv, m = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
  attention = lambda: {"query": {"kernel": leaf(e, qkv)}, "key": {"kernel": leaf(e, qkv)},
                       "value": {"kernel": leaf(e, qkv)}, "out": {"kernel": leaf(qkv, e)}}
  mlp = lambda: {"wi_0": {"kernel": leaf(e, m)}, "wi_1": {"kernel": leaf(e, m)}, "wo": {"kernel": leaf(m, e)}}
  scale = lambda: {"scale": leaf(e)}
  relpos = lambda: {"rel_embedding": leaf(config.num_heads, config.relative_attention_num_buckets)}
  encoder = {f"layers_{i}": {"attention": attention(), "pre_attention_layer_norm": scale(), "mlp": mlp(),
                             "pre_mlp_layer_norm": scale()} for i in range(config.num_encoder_layers)}
  decoder = {f"layers_{i}": {"self_attention": attention(), "pre_self_attention_layer_norm": scale(),
                             "encoder_decoder_attention": attention(), "pre_cross_attention_layer_norm": scale(),
                             "mlp": mlp(), "pre_mlp_layer_norm": scale()} for i in range(config.num_decoder_layers)}
  return {"token_embedder": {"embedding": leaf(config.vocab_size, e)},
          "encoder": {**encoder, "relpos_bias": relpos(), "encoder_norm": scale()},
          "decoder": {**decoder, "relpos_bias": relpos(), "decoder_norm": scale(),
                      "logits_dense": {"kernel": leaf(e, config.vocab_size)}}}


def random_t5x_params(config: T5Config, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return t5x_tree(config, lambda *shape: rng.normal(size=shape).astype(np.float32))


def abstract_t5x_params(config: T5Config) -> dict:
  return t5x_tree(config, lambda *shape: jax.ShapeDtypeStruct(shape, np.float32))


def adafactor_slots(params: dict) -> dict:
  """Optimizer slots shaped like t5x's Adafactor state (factored v_row / v_col for matrices)."""
  def slots(x):
    if x.ndim == 2:  # with momentum (beta1), so the big slot `m` goes to zarr like the parameter
      return {"v_row": np.full(x.shape[0], 0.5, np.float32), "v_col": np.full(x.shape[1], 0.5, np.float32),
              "m": np.full(x.shape, 0.125, np.float32)}
    return {"v": np.full(x.shape, 0.25, np.float32)}
  return jax.tree_util.tree_map(slots, params)


def assert_trees_equal(actual: dict, expected: dict) -> None:
  actual, expected = (traverse_util.flatten_dict(t, sep="/") for t in (actual, expected))
  assert sorted(actual) == sorted(expected)
  for name, value in expected.items():
    assert actual[name].dtype == np.float32, name
    np.testing.assert_array_equal(actual[name], np.asarray(value, np.float32), err_msg=name)


@pytest.fixture
def params():
  return random_t5x_params(CONFIG)


def save_legacy(params, directory, **kwargs):
  return save_t5x_legacy(params, str(directory), step=7, inline_threshold=INLINE_THRESHOLD,
                         chunk_bytes=CHUNK_BYTES, **kwargs)


def read_msgpack(checkpoint_dir):
  with open(os.path.join(checkpoint_dir, "checkpoint"), "rb") as f:
    return serialization.msgpack_restore(f.read())


def test_legacy_round_trip_returns_every_array_equal(tmp_path, params):
  checkpoint_dir = save_legacy(params, tmp_path, param_states=adafactor_slots(params))
  assert_trees_equal(load_t5x_legacy(checkpoint_dir), params)


def test_legacy_layout_has_chunked_zarr_for_big_arrays_and_inline_small_ones(tmp_path, params):
  checkpoint_dir = save_legacy(params, tmp_path)
  contents = read_msgpack(checkpoint_dir)
  assert contents["version"] == 3 and int(contents["optimizer"]["state"]["step"]) == 7
  target = contents["optimizer"]["target"]
  spec = target["token_embedder"]["embedding"]
  assert spec["driver"] == "zarr" and spec["kvstore"] == {"driver": "file", "path": "target.token_embedder.embedding"}
  assert spec["metadata"]["compressor"] == {"id": "gzip", "level": 1} and spec["metadata"]["shape"] == [64, 32]
  zarr_dir = os.path.join(checkpoint_dir, "target.token_embedder.embedding")
  chunk_files = [name for name in os.listdir(zarr_dir) if name != ".zarray"]
  assert len(chunk_files) == (64 * 32 * 4) // CHUNK_BYTES  # 8 chunks of 1 KiB
  assert isinstance(target["encoder"]["encoder_norm"]["scale"], np.ndarray)  # inline
  assert isinstance(target["encoder"]["relpos_bias"]["rel_embedding"], np.ndarray)


def test_legacy_bfloat16_arrays_load_as_float32(tmp_path, params):
  bf16 = jax.tree_util.tree_map(lambda x: x.astype(ml_dtypes.bfloat16), params)
  checkpoint_dir = save_legacy(bf16, tmp_path)
  contents = read_msgpack(checkpoint_dir)
  assert contents["optimizer"]["target"]["token_embedder"]["embedding"]["metadata"]["dtype"] == "bfloat16"
  assert contents["optimizer"]["target"]["encoder"]["encoder_norm"]["scale"].dtype == ml_dtypes.bfloat16
  assert_trees_equal(load_t5x_legacy(checkpoint_dir), bf16)


def test_legacy_casts_to_requested_dtype(tmp_path, params):
  loaded = load_t5x_legacy(save_legacy(params, tmp_path), dtype=ml_dtypes.bfloat16)
  assert {x.dtype for x in jax.tree_util.tree_leaves(loaded)} == {np.dtype(ml_dtypes.bfloat16)}


def test_legacy_optimizer_param_states_are_written_but_not_loaded(tmp_path, params):
  checkpoint_dir = save_legacy(params, tmp_path, param_states=adafactor_slots(params))
  assert os.path.isdir(os.path.join(checkpoint_dir, "state.param_states.token_embedder.embedding.m"))
  slots = read_msgpack(checkpoint_dir)["optimizer"]["state"]["param_states"]
  assert slots["token_embedder"]["embedding"]["v_row"].shape == (64,)  # inline
  loaded = load_t5x_legacy(checkpoint_dir)
  assert sorted(loaded) == ["decoder", "encoder", "token_embedder"]


def test_legacy_accepts_the_checkpoint_file_path(tmp_path, params):
  checkpoint_dir = save_legacy(params, tmp_path)
  assert_trees_equal(load_t5x_legacy(os.path.join(checkpoint_dir, "checkpoint")), params)


def test_legacy_reads_specs_written_with_the_gfile_driver(tmp_path, params):
  checkpoint_dir = save_legacy(params, tmp_path)
  contents = read_msgpack(checkpoint_dir)

  def to_gfile(value):
    if isinstance(value, dict) and "kvstore" in value:
      return {**value, "kvstore": {**value["kvstore"], "driver": "gfile"}}
    return value
  contents["optimizer"]["target"] = jax.tree_util.tree_map(
      to_gfile, contents["optimizer"]["target"], is_leaf=lambda v: isinstance(v, dict) and "kvstore" in v)
  assert contents["optimizer"]["target"]["token_embedder"]["embedding"]["kvstore"]["driver"] == "gfile"
  with open(os.path.join(checkpoint_dir, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(contents))
  assert_trees_equal(load_t5x_legacy(checkpoint_dir), params)


def test_legacy_checkpoint_still_loads_after_its_directory_moves(tmp_path, params):
  checkpoint_dir = save_legacy(params, tmp_path / "a")
  moved = shutil.move(checkpoint_dir, tmp_path / "b")
  assert_trees_equal(load_t5x_legacy(str(moved)), params)


def test_legacy_refuses_a_tensorflow_checkpoint_index(tmp_path):
  (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1000000"\n')
  with pytest.raises(ValueError, match="TensorFlow checkpoint index.*convert_tf_checkpoint"):
    load_t5x_legacy(str(tmp_path))


def test_gcs_checkpoint_dirs_use_the_gcs_kvstore():
  assert t5x.checkpoint_dir_kvstore("gs://t5-data/pretrained_models/t5x/t5_1_1_base/checkpoint_1000000") == {
      "driver": "gcs", "bucket": "t5-data", "path": "pretrained_models/t5x/t5_1_1_base/checkpoint_1000000/"}
  assert t5x.legacy_checkpoint_file("gs://b/m/checkpoint_5") == "gs://b/m/checkpoint_5/checkpoint"


def test_orbax_round_trip_returns_target_only(tmp_path, params):
  checkpoint_dir = save_t5x_orbax(params, str(tmp_path), step=3, param_states=adafactor_slots(params))
  assert checkpoint_dir == os.path.join(str(tmp_path), "checkpoint_3")
  assert os.path.isfile(os.path.join(checkpoint_dir, "state", "_METADATA"))
  assert_trees_equal(load_t5x_orbax(checkpoint_dir), params)
  assert_trees_equal(load_t5x_orbax(os.path.join(checkpoint_dir, "state")), params)


@pytest.mark.parametrize("layout", ["legacy", "legacy_file", "orbax"])
def test_load_params_detects_the_layout_and_infers_the_config(tmp_path, params, layout):
  if layout == "orbax":
    path = save_t5x_orbax(params, str(tmp_path), step=1)
  else:
    path = save_legacy(params, tmp_path)
    path = os.path.join(path, "checkpoint") if layout == "legacy_file" else path
  loaded, inferred = load_params(path)
  assert_trees_equal(loaded, params)
  assert inferred == {"vocab_size": 64, "emb_dim": 32, "num_heads": 6, "head_dim": 8, "mlp_dim": 48,
                      "num_encoder_layers": 2, "num_decoder_layers": 3, "relative_attention_num_buckets": 32}


@pytest.mark.parametrize("layout", ["legacy", "orbax"])
def test_checkpoint_step_is_the_step_the_checkpoint_was_saved_at(tmp_path, params, layout):
  save = save_t5x_orbax if layout == "orbax" else save_t5x_legacy
  assert checkpoint_step(save(params, str(tmp_path), step=1_100_000)) == 1_100_000


@pytest.mark.parametrize("layout", ["legacy", "orbax"])
def test_load_param_reads_one_parameter(tmp_path, params, layout):
  if layout == "orbax":
    path = save_t5x_orbax(params, str(tmp_path), step=1)
  else:
    path = save_legacy(params, tmp_path)
  np.testing.assert_array_equal(load_param(path, "token_embedder/embedding"), params["token_embedder"]["embedding"])
  with pytest.raises(ValueError, match="holds no parameter encoder/prompt/prompt/prompt"):
    load_param(path, "encoder/prompt/prompt/prompt")


def test_load_params_reports_a_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"checkpoint path {tmp_path}/nope does not exist"):
    load_params(tmp_path / "nope")


def test_load_params_names_what_it_looked_for_in_an_unknown_layout(tmp_path):
  (tmp_path / "checkpoint_100").mkdir()
  (tmp_path / "checkpoint_200").mkdir()
  with pytest.raises(ValueError) as e:
    load_params(tmp_path)
  message = str(e.value)
  assert "\n" not in message
  for looked_for in ("`checkpoint`", "state/_METADATA", "config.json", "model.safetensors"):
    assert looked_for in message
  assert "checkpoint_100, checkpoint_200: pass one of those directories" in message


def test_infer_config_reads_shapes_from_shape_dtype_structs(params):
  assert infer_config(abstract_t5x_params(CONFIG)) == infer_config(params)


def test_check_config_passes_a_matching_config(params):
  check_config(CONFIG, infer_config(params), "ckpt")


def test_check_config_names_every_mismatch_and_the_fix_in_one_line():
  inferred = infer_config(abstract_t5x_params(config_for_size("base", vocab_size=64)))
  with pytest.raises(ValueError) as e:
    check_config(config_for_size("small"), inferred, "/ckpt/checkpoint_1000")
  message = str(e.value)
  assert "\n" not in message and message.startswith("/ckpt/checkpoint_1000 does not match the model config")
  for field, ckpt, cfg in [("vocab_size", 64, 32128), ("emb_dim", 768, 512), ("num_heads", 12, 6),
                           ("mlp_dim", 2048, 1024), ("num_encoder_layers", 12, 8), ("num_decoder_layers", 12, 8)]:
    assert f"{field} is {ckpt} in the checkpoint but {cfg} in the config" in message
  assert "head_dim" not in message  # 64 in both
  assert message.endswith("use gin_configs/models/t5_1_1_base.gin with --gin.T5Config.vocab_size=64")


def test_check_config_suggests_bindings_when_no_size_fits(params):
  with pytest.raises(ValueError, match=r"mlp_dim is 48 in the checkpoint but 64 .*; pass --gin.T5Config.mlp_dim=48$"):
    check_config(CONFIG.replace(mlp_dim=64), infer_config(params), "ckpt")


def abstract_with_prompt(prompt_length=5):
  """What jax.eval_shape(model.init) gives for a prompted model: ShapeDtypeStructs, prompt included."""
  tree = abstract_t5x_params(CONFIG)
  tree["encoder"]["prompt"] = {"prompt": {"prompt": jax.ShapeDtypeStruct((prompt_length, 32), np.float32)}}
  return tree


def test_merge_frozen_takes_every_expected_param_and_leaves_the_prompt_out(params):
  merged = merge_frozen(abstract_with_prompt(), params, "ckpt", skip_regex=".*/prompt/.*")
  assert_trees_equal(merged, params)


def test_merge_frozen_names_param_shapes_and_file_on_a_shape_mismatch(params):
  expected = abstract_with_prompt()
  expected["decoder"]["logits_dense"]["kernel"] = jax.ShapeDtypeStruct((32, 128), np.float32)
  with pytest.raises(ValueError) as e:
    merge_frozen(expected, params, "/ckpt/checkpoint_7", skip_regex=".*/prompt/.*")
  assert str(e.value).startswith("/ckpt/checkpoint_7 does not fit the model: decoder/logits_dense/kernel is "
                                 "(32, 64) in the checkpoint, the model expects (32, 128)")


def test_merge_frozen_reports_params_missing_from_the_checkpoint(params):
  with pytest.raises(ValueError, match="ckpt lacks 1 parameters the model expects: encoder/prompt/prompt/prompt;"):
    merge_frozen(abstract_with_prompt(), params, "ckpt")


def test_merge_frozen_refuses_unexpected_params_but_ignores_optimizer_slots(params):
  expected = abstract_with_prompt()
  with_slots = {**params, "state": {"param_states": adafactor_slots(params)}}
  merge_frozen(expected, with_slots, "ckpt", skip_regex=".*/prompt/.*")
  extra = {**params, "encoder": {**params["encoder"], "layers_2": params["encoder"]["layers_1"]}}
  with pytest.raises(ValueError, match="ckpt holds 9 parameters the model does not have: encoder/layers_2/"):
    merge_frozen(expected, extra, "ckpt", skip_regex=".*/prompt/.*")
