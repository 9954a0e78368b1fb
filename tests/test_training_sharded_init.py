"""Parameters built straight into their shardings on a 2x4 (data x model) mesh, and MODEL_DIR written through gfile.

`runs.initial_params(..., mesh=mesh)` must never need a whole model on one device: the frozen weights arrive split
over `model`, the prompt replicated, with the same values the single-device path gives. The gfile tests use TF's
in-memory `ram://` filesystem, which takes the same code path a gs:// MODEL_DIR does, without a network.
"""

import functools
import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import traverse_util
from jax.sharding import PartitionSpec

from prompt_tuning_jax import checkpoints, prompts
from prompt_tuning_jax.model import Transformer, config_for_size
from prompt_tuning_jax.training import checkpointing, losses, optimizers, partitioning, runs, trainer
from prompt_tuning_jax.training.metrics_writer import METRICS_FILE, MetricsWriter

LENGTHS = {"inputs": 8, "targets": 4}
PROMPT_REGEX = "encoder/prompt/.*"
PROMPT = "encoder/prompt/prompt/prompt"
# Frozen weights with a `model`-split axis under the standard rules: path -> (spec, index of the split axis).
SPLIT_OVER_MODEL = {
    "token_embedder/embedding": (PartitionSpec("model", None), 0),  # [vocab, embed]
    "decoder/logits_dense/kernel": (PartitionSpec(None, "model"), 1),  # [embed, vocab]
    "encoder/layers_0/mlp/wi_0/kernel": (PartitionSpec(None, "model"), 1),  # [embed, mlp]
    "decoder/layers_1/mlp/wo/kernel": (PartitionSpec("model", None), 0),  # [mlp, embed]
}


def _model(prompt_length: int | None = 4) -> Transformer:
  factory = None
  if prompt_length is not None:
    # Sampled vocabulary: the prompt's rows must come from the restored embedding table.
    factory = functools.partial(prompts.PrefixPrompt, length=prompt_length,
                                init=prompts.from_sampled_vocab(population_size=100))
  return Transformer(config_for_size("tiny"), prompt_factory=factory)


@pytest.fixture(scope="module")
def mesh():
  return partitioning.create_mesh(mesh_shape=(2, 4))


@pytest.fixture(scope="module")
def legacy_checkpoint(tmp_path_factory):
  """(checkpoint_N directory, its params flattened by '/') of a tiny T5 1.1 without a prompt, random weights."""
  shapes, _ = runs.abstract_params(_model(prompt_length=None), LENGTHS)
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  directory = checkpoints.save_t5x_legacy(params, str(tmp_path_factory.mktemp("pretrained")), step=7)
  return directory, traverse_util.flatten_dict(params, sep="/")


@pytest.fixture(scope="module")
def restored_sharded(legacy_checkpoint, mesh):
  return traverse_util.flatten_dict(
      runs.initial_params(_model(), LENGTHS, legacy_checkpoint[0], PROMPT_REGEX, seed=3, mesh=mesh), sep="/")


@pytest.fixture(scope="module")
def random_sharded(mesh):
  return traverse_util.flatten_dict(runs.initial_params(_model(), LENGTHS, None, None, seed=3, mesh=mesh), sep="/")


def _assert_split_over_model(flat):
  for path, (spec, axis) in SPLIT_OVER_MODEL.items():
    array = flat[path]
    assert array.sharding.spec == spec, path
    for shard in array.addressable_shards:
      assert shard.data.shape[axis] == array.shape[axis] // 4, (path, shard.data.shape, array.shape)
      assert shard.data.size < array.size, path


def _assert_replicated_prompt(flat):
  prompt = flat[PROMPT]
  assert prompt.sharding.spec == PartitionSpec(None, None)
  assert prompt.sharding.is_fully_replicated
  assert all(shard.data.shape == prompt.shape for shard in prompt.addressable_shards)


def test_restored_frozen_weights_arrive_split_over_the_model_axis(restored_sharded):
  _assert_split_over_model(restored_sharded)


def test_prompt_initialized_after_a_sharded_restore_is_replicated(restored_sharded):
  _assert_replicated_prompt(restored_sharded)


def test_sharded_restore_equals_the_single_device_restore(legacy_checkpoint, restored_sharded):
  unsharded = traverse_util.flatten_dict(
      runs.initial_params(_model(), LENGTHS, legacy_checkpoint[0], PROMPT_REGEX, seed=3), sep="/")
  assert set(unsharded) == set(restored_sharded)
  for path, value in unsharded.items():
    np.testing.assert_array_equal(partitioning.fetch(restored_sharded[path]), np.asarray(value), err_msg=path)


def test_sharded_restore_keeps_the_checkpoint_and_samples_the_prompt_from_its_embedding(legacy_checkpoint,
                                                                                       restored_sharded):
  _, saved = legacy_checkpoint
  for path, value in saved.items():
    np.testing.assert_array_equal(partitioning.fetch(restored_sharded[path]), value, err_msg=path)
  embedding = saved["token_embedder/embedding"]
  prompt = partitioning.fetch(restored_sharded[PROMPT])
  for row in prompt:
    assert np.flatnonzero((embedding[:100] == row).all(axis=1)).size == 1


def test_random_model_is_initialized_split_over_the_model_axis(random_sharded):
  _assert_split_over_model(random_sharded)
  _assert_replicated_prompt(random_sharded)


def test_sharded_random_init_equals_the_single_device_init(random_sharded):
  unsharded = traverse_util.flatten_dict(runs.initial_params(_model(), LENGTHS, None, None, seed=3), sep="/")
  assert set(unsharded) == set(random_sharded)
  for path, value in unsharded.items():
    np.testing.assert_array_equal(partitioning.fetch(random_sharded[path]), np.asarray(value), err_msg=path)


def test_trainer_trains_params_built_on_the_mesh_without_moving_the_frozen_ones(legacy_checkpoint, mesh, tmp_path):
  model = _model()
  params = runs.initial_params(model, LENGTHS, legacy_checkpoint[0], PROMPT_REGEX, seed=3, mesh=mesh)
  _, param_axes = runs.abstract_params(model, LENGTHS)
  frozen_before = {path: value for path, value in traverse_util.flatten_dict(params, sep="/").items()
                   if path != PROMPT}
  rng = np.random.RandomState(0)
  tokens = rng.randint(2, 128, size=(8, 8)).astype(np.int32)
  targets = rng.randint(2, 128, size=(8, 4)).astype(np.int32)
  batch = {"encoder_input_tokens": tokens, "decoder_target_tokens": targets,
           "decoder_input_tokens": np.concatenate([np.zeros((8, 1), np.int32), targets[:, :-1]], axis=1),
           "decoder_loss_weights": np.ones_like(targets)}
  model_checkpoints = checkpointing.Checkpoints(str(tmp_path), async_save=False)
  writer = MetricsWriter(str(tmp_path))
  try:
    state, frozen = trainer.train(
        model=model, params=params, param_axes=param_axes, trainable_regex=PROMPT_REGEX,
        optimizer=optimizers.adafactor(), loss_config=losses.LossConfig(), mesh=mesh,
        rules=partitioning.standard_logical_axis_rules(), train_batches=lambda start: iter([batch] * 2),
        global_batch_size=8, num_train_steps=2, checkpoints=model_checkpoints, save_period=2, writer=writer,
        input_position={}, log_period=1, show_progress=False)
  finally:
    writer.close()
    model_checkpoints.close()
  for path, value in traverse_util.flatten_dict(frozen, sep="/").items():
    assert value is frozen_before[path], f"{path} was copied, not kept where it was built"
  assert int(partitioning.fetch(state.step)) == 2
  _assert_replicated_prompt(traverse_util.flatten_dict(state.trainable, sep="/"))


@pytest.fixture
def url_model_dir(request):
  """A MODEL_DIR on TF's in-memory filesystem: a URL, as gs:// is, reached only through tf.io.gfile."""
  path = f"ram://model_dirs/{request.node.name}"
  yield path
  if tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)


def test_metrics_writer_appends_jsonl_and_events_to_a_url_model_dir(url_model_dir):
  writer = MetricsWriter(url_model_dir)
  writer.write_scalars(1, "train", {"loss": 2.0})
  writer.write_scalars(2, "train", {"loss": 1.5})
  writer.close()
  with tf.io.gfile.GFile(f"{url_model_dir}/{METRICS_FILE}") as f:
    lines = [json.loads(line) for line in f]
  assert lines == [{"step": 1, "split": "train", "loss": 2.0}, {"step": 2, "split": "train", "loss": 1.5}]
  assert tf.io.gfile.glob(f"{url_model_dir}/train/events.out.tfevents.*")


def test_url_model_dir_is_kept_as_a_url_and_proved_writable(url_model_dir):
  assert runs.check_writable_dir(url_model_dir) == url_model_dir
  assert tf.io.gfile.isdir(url_model_dir)
  assert tf.io.gfile.listdir(url_model_dir) == []  # the write probe is removed


def test_prompt_export_to_a_url_model_dir_writes_numpy_and_peft_files(url_model_dir):
  prompt = np.random.RandomState(0).normal(size=(4, 32)).astype(np.float32)
  checkpointing.export_prompt(prompt, url_model_dir, 5, peft={"num_layers": 2, "num_attention_heads": 4})
  exported = f"{url_model_dir}/numpy_checkpoints/checkpoint_5/encoder.prompt.prompt.prompt"
  with tf.io.gfile.GFile(exported, "rb") as f:
    np.testing.assert_array_equal(np.load(f, allow_pickle=False), prompt)
  assert sorted(tf.io.gfile.listdir(f"{url_model_dir}/peft_adapters/checkpoint_5")) == [
      "adapter_config.json", "adapter_model.safetensors"]


def test_checkpoint_is_found_in_a_url_model_dir(url_model_dir):
  for step in (2, 10):
    tf.io.gfile.makedirs(f"{url_model_dir}/checkpoint_{step}/state")
  assert runs.resolve_checkpoint(url_model_dir) == (f"{url_model_dir}/checkpoint_10", 10)
