"""Mesh construction, logical rules, batch feeding and optimizer-state shardings (8 host CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning_jax.training import optimizers, partitioning


@pytest.mark.parametrize("num_partitions, shape", [(1, (8, 1)), (2, (4, 2)), (8, (1, 8))])
def test_create_mesh_splits_devices_into_data_and_model(num_partitions, shape):
  mesh = partitioning.create_mesh(num_partitions)
  assert mesh.axis_names == ("data", "model")
  assert tuple(mesh.devices.shape) == shape


def test_create_mesh_explicit_shape_overrides_partitions():
  mesh = partitioning.create_mesh(num_partitions=8, mesh_shape=(2, 4))
  assert tuple(mesh.devices.shape) == (2, 4)


def test_create_mesh_rejects_partitions_not_dividing_devices():
  with pytest.raises(ValueError, match="num_partitions=3 does not divide the 8 devices"):
    partitioning.create_mesh(3)


def test_create_mesh_rejects_shape_not_covering_devices():
  with pytest.raises(ValueError, match=r"mesh_shape \(2, 2\)"):
    partitioning.create_mesh(mesh_shape=(2, 2))


def test_prompt_axes_are_replicated_and_weights_split_over_model():
  rules = dict(partitioning.standard_logical_axis_rules())
  assert rules["prompt"] is None and rules["prompt_embed"] is None
  assert rules["batch"] == "data"
  assert rules["mlp"] == "model" and rules["vocab"] == "model" and rules["heads"] == "model"


def test_logical_shardings_map_names_to_mesh_axes():
  mesh = partitioning.create_mesh(mesh_shape=(2, 4))
  specs = {"wi": PartitionSpec("embed", "mlp"), "prompt": PartitionSpec("prompt", "prompt_embed")}
  shardings = partitioning.logical_shardings(specs, mesh, partitioning.standard_logical_axis_rules())
  assert shardings["wi"].spec == PartitionSpec(None, "model")
  assert shardings["prompt"].spec == PartitionSpec(None, None)


def test_single_process_feeds_every_batch_row():
  mesh = partitioning.create_mesh(mesh_shape=(2, 4))
  assert partitioning.host_batch_rows(mesh, 8) == slice(0, 8)
  assert partitioning.data_shard(mesh, 8) == (0, 1, 8)


def test_batch_size_must_divide_over_data_axis():
  mesh = partitioning.create_mesh(mesh_shape=(8, 1))
  with pytest.raises(ValueError, match="BATCH_SIZE 12 is not divisible by the data-parallel size 8"):
    partitioning.host_batch_rows(mesh, 12)


def test_global_batch_is_split_over_data_axis():
  mesh = partitioning.create_mesh(mesh_shape=(4, 2))
  host = {"encoder_input_tokens": np.arange(16, dtype=np.int32).reshape(8, 2)}
  batch = partitioning.global_batch(host, mesh, 8)["encoder_input_tokens"]
  assert batch.sharding.spec == PartitionSpec("data")
  np.testing.assert_array_equal(np.asarray(batch), host["encoder_input_tokens"])
  assert {shard.data.shape for shard in batch.addressable_shards} == {(2, 2)}


def test_put_global_places_host_values_with_given_shardings():
  mesh = partitioning.create_mesh(mesh_shape=(2, 4))
  value = np.arange(32, dtype=np.float32).reshape(4, 8)
  placed = partitioning.put_global({"w": value}, {"w": NamedSharding(mesh, PartitionSpec(None, "model"))})["w"]
  assert placed.sharding.spec == PartitionSpec(None, "model")
  np.testing.assert_array_equal(partitioning.fetch(placed), value)


def test_optimizer_slots_follow_their_parameter_sharding():
  mesh = partitioning.create_mesh(mesh_shape=(2, 4))
  params = {"mlp": {"kernel": jnp.zeros((8, 16))}, "prompt": jnp.zeros((3, 8))}
  shardings = {"mlp": {"kernel": NamedSharding(mesh, PartitionSpec(None, "model"))},
               "prompt": partitioning.replicated(mesh)}
  tx = optimizers.trainable_only(optax.adam(1e-3), ".*")
  abstract = jax.eval_shape(tx.init, params)
  state_shardings = partitioning.optimizer_state_shardings(abstract, params, shardings, mesh)
  adam = state_shardings.inner_states["trainable"].inner_state[0]
  assert adam.mu["mlp"]["kernel"].spec == PartitionSpec(None, "model")
  assert adam.nu["prompt"].spec == PartitionSpec()
  assert adam.count.spec == PartitionSpec()


def test_initialize_distributed_is_a_no_op_for_one_process(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  partitioning.initialize_distributed()
  assert jax.process_count() == 1


def test_initialize_distributed_rejects_incomplete_flags():
  with pytest.raises(ValueError, match="give all three or none"):
    partitioning.initialize_distributed(coordinator_address="127.0.0.1:1234")
