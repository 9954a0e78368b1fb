"""Checkpoint and prompt files on tf.io.gfile filesystems other than the local disk.

TF's in-memory filesystem `ram://` stands in for gs:// (no network here): the same gfile calls serve both.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from _optional import needs, optional

from prompt_tuning_jax.checkpoints import (
  export_numpy_checkpoint,
  load_params,
  load_prompt,
  save_peft_adapter,
  save_prompt_npy,
)
from prompt_tuning_jax.checkpoints.t5x import legacy_checkpoint_file, orbax_state_dir

torch, transformers = optional("torch"), optional("transformers")
P, EMBED = 5, 32


@pytest.fixture
def ram_dir(tmp_path):
  """A directory of TF's in-memory filesystem, unique to the test."""
  directory = f"ram://{tmp_path.name}"
  tf.io.gfile.makedirs(directory)
  yield directory
  tf.io.gfile.rmtree(directory)


def random_prompt(seed=0):
  return np.random.default_rng(seed).normal(size=(P, EMBED)).astype(np.float32)


def copy_tree(local_dir, target_dir):
  """Copies a local directory's files under `target_dir` with gfile (as gsutil cp -r would)."""
  for directory, _, names in os.walk(local_dir):
    for name in names:
      target = os.path.join(target_dir, os.path.relpath(os.path.join(directory, name), local_dir))
      tf.io.gfile.makedirs(os.path.dirname(target))
      tf.io.gfile.copy(os.path.join(directory, name), target)


def read(path):
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


def test_npy_round_trip_through_ram_is_exact(ram_dir):
  prompt = random_prompt()
  path = save_prompt_npy(prompt, f"{ram_dir}/prompts/prompt.npy")
  assert tf.io.gfile.exists(path)  # in TF's filesystem, not in a local directory named 'ram:'
  loaded = load_prompt(path, length=P, embed_dim=EMBED)
  assert loaded.dtype == np.float32
  np.testing.assert_array_equal(loaded, prompt)


def test_save_prompt_npy_to_ram_leaves_only_the_named_file(ram_dir):
  save_prompt_npy(random_prompt(), f"{ram_dir}/my_prompt")
  assert tf.io.gfile.listdir(ram_dir) == ["my_prompt"]


def test_numpy_checkpoint_export_to_ram_matches_the_local_export_byte_for_byte(ram_dir, tmp_path):
  prompt = random_prompt()
  remote = export_numpy_checkpoint(prompt, ram_dir, step=1200)
  local = export_numpy_checkpoint(prompt, tmp_path, step=1200)
  assert remote == f"{ram_dir}/numpy_checkpoints/checkpoint_1200/encoder.prompt.prompt.prompt"
  assert read(remote) == read(local)
  np.testing.assert_array_equal(load_prompt(remote, length=P, embed_dim=EMBED), prompt)


def test_peft_adapter_round_trip_through_ram_matches_the_local_files(ram_dir, tmp_path):
  prompt = random_prompt()
  remote = save_peft_adapter(prompt, f"{ram_dir}/adapter", num_layers=2, num_attention_heads=6)
  save_peft_adapter(prompt, tmp_path, num_layers=2, num_attention_heads=6)
  assert sorted(tf.io.gfile.listdir(remote)) == sorted(os.listdir(tmp_path))
  for name in os.listdir(tmp_path):
    assert read(f"{remote}/{name}") == read(str(tmp_path / name)), name
  np.testing.assert_array_equal(load_prompt(remote, length=P, embed_dim=EMBED), prompt)


@pytest.mark.parametrize("load, name, message", [
    (load_prompt, "absent.npy", "prompt file DIR/absent.npy does not exist"),
    (load_params, "checkpoint_7", "checkpoint path DIR/checkpoint_7 does not exist")])
def test_missing_ram_path_gives_the_same_error_as_a_missing_local_one(ram_dir, tmp_path, load, name, message):
  messages = []
  for directory in (ram_dir, str(tmp_path)):
    with pytest.raises(FileNotFoundError) as error:
      load(f"{directory}/{name}")
    messages.append(str(error.value).replace(directory, "DIR"))
  assert messages == [message, message]


@needs("torch", "transformers")
def test_hugging_face_directory_in_ram_loads_like_the_local_one(ram_dir, tmp_path):
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=64, d_model=EMBED, d_kv=8, num_heads=6, d_ff=48, num_layers=2,
                                 feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 decoder_start_token_id=0)
  transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path)
  copy_tree(tmp_path, f"{ram_dir}/t5")
  local_params, local_inferred = load_params(tmp_path)
  params, inferred = load_params(f"{ram_dir}/t5")
  assert inferred == local_inferred
  np.testing.assert_equal(params, local_params)


def test_checkpoint_layouts_are_recognised_in_ram(ram_dir):
  for name in ("legacy/checkpoint_1/checkpoint", "orbax/checkpoint_2/state/_METADATA"):
    with tf.io.gfile.GFile(f"{ram_dir}/{name}", "wb") as f:
      f.write(b"x")
  assert legacy_checkpoint_file(f"{ram_dir}/legacy/checkpoint_1") == f"{ram_dir}/legacy/checkpoint_1/checkpoint"
  assert legacy_checkpoint_file(f"{ram_dir}/orbax/checkpoint_2") is None
  assert orbax_state_dir(f"{ram_dir}/orbax/checkpoint_2") == f"{ram_dir}/orbax/checkpoint_2/state"
  assert orbax_state_dir(f"{ram_dir}/legacy/checkpoint_1") is None


def test_model_dir_in_ram_is_refused_naming_its_checkpoints(ram_dir):
  tf.io.gfile.makedirs(f"{ram_dir}/checkpoint_3")
  with pytest.raises(ValueError, match=r"is not a checkpoint this package reads.*it holds checkpoint_3: pass one"):
    load_params(ram_dir)
