"""Device mesh, logical-axis rules and multi-host setup (t5x partitioning, reduced to what this trainer needs).

The mesh has two axes, `data` (the batch is split over it) and `model` (large weights are split over it when it is
bigger than 1). Parameters and activations carry logical axis names (`batch`, `embed`, `mlp`, ...); a table of rules
maps each logical name to a mesh axis or to None (replicated), as in t5x.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")
LogicalRules = Sequence[tuple[str, str | None]]


def standard_logical_axis_rules() -> LogicalRules:
  """t5x's rules for 1-D (data) plus 1-D (model) partitioning, with the prompt replicated.

  `embed` and `kv` stay unsplit; vocabulary, MLP and heads split over `model` (a no-op when `model` has size 1).
  The prompt's axes are replicated so the prompt exports as one array and its update needs no communication.
  """
  return (
      ("batch", "data"),
      ("vocab", "model"),
      ("mlp", "model"),
      ("heads", "model"),
      ("joined_kv", "model"),
      ("embed", None),
      ("kv", None),
      ("length", None),
      ("relpos_buckets", None),
      ("prompt", None),
      ("prompt_embed", None),
  )


def _several_processes_in_environment() -> bool:
  # The launchers jax.distributed knows set these; one process needs no coordinator.
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  for count_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(os.environ.get(count_var, "1")) > 1:
      return True
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, initialization_timeout: int = 300) -> None:
  """Joins a multi-process job (multi-host TPU/GPU, or several CPU processes) before jax is first used.

  Explicit arguments (the CLI's `--coordinator_address`, `--process_count`, `--process_index`) win. Otherwise the
  job is joined when the environment names several processes (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, a TPU pod
  slice); jax then reads the missing values from that environment. A single process does nothing.
  `initialization_timeout`: seconds jax waits for every process to join.
  """
  explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if jax.distributed.is_initialized() or not (explicit or _several_processes_in_environment()):
    return
  if explicit and None in (coordinator_address, num_processes, process_id):
    raise ValueError(f"multi-process flags are incomplete: coordinator_address={coordinator_address}, "
                     f"process_count={num_processes}, process_index={process_id}; give all three or none")
  # CPU processes exchange collectives through gloo; the option does not affect GPU/TPU backends.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, initialization_timeout=initialization_timeout)


def create_mesh(num_partitions: int = 1, mesh_shape: Sequence[int] | None = None,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, model) mesh over all devices of the job.

  Args:
    num_partitions: size of the `model` axis; the `data` axis takes the remaining devices.
    mesh_shape: explicit (data, model) shape; overrides `num_partitions`.
    devices: the devices to use (default: every device of every process).

  Returns:
    A `Mesh` with axis names ('data', 'model') and automatic axis types.
  """
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices)
  if mesh_shape is None:
    if num_partitions <= 0 or count % num_partitions:
      raise ValueError(f"num_partitions={num_partitions} does not divide the {count} devices; "
                       f"choose a divisor of {count}")
    mesh_shape = (count // num_partitions, num_partitions)
  mesh_shape = tuple(int(s) for s in mesh_shape)
  if len(mesh_shape) != 2 or int(np.prod(mesh_shape)) != count:
    raise ValueError(f"mesh_shape {mesh_shape} must be (data, model) with data * model = {count} devices")
  try:
    device_grid = mesh_utils.create_device_mesh(mesh_shape, devices)
  except (ValueError, NotImplementedError, AssertionError):
    # Topology-aware placement is only known for some TPU/GPU layouts; any order is correct, just slower.
    device_grid = np.asarray(devices).reshape(mesh_shape)
  return Mesh(device_grid, MESH_AXES)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Makes `mesh` and `rules` the ambient ones, so the model's `nn.with_logical_constraint` calls take effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_shardings(logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """Tree of logical `PartitionSpec`s (e.g. from `nn.get_partition_spec`) -> tree of `NamedSharding`s."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of an array every device holds whole (scalars, the prompt, metrics)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Inputs [batch, length]: the batch split over `data`, copies over `model`."""
  return NamedSharding(mesh, PartitionSpec("data"))


def host_batch_rows(mesh: Mesh, global_batch_size: int) -> slice:
  """The rows of every global batch [global_batch, ...] that this process feeds.

  When the `model` axis spans processes, several processes feed the same rows; `make_array_from_process_local_data`
  expects exactly that.
  """
  data_size = mesh.shape["data"]
  if global_batch_size % data_size:
    raise ValueError(f"BATCH_SIZE {global_batch_size} is not divisible by the data-parallel size {data_size} "
                     f"(mesh {dict(mesh.shape)}); choose a multiple of {data_size}")
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,)).values()
  starts = sorted({index[0].start or 0 for index in indices})
  stops = sorted({global_batch_size if index[0].stop is None else index[0].stop for index in indices})
  rows = slice(starts[0], stops[-1])
  per_device = global_batch_size // data_size
  if (rows.stop - rows.start) != per_device * len(starts):
    raise ValueError(f"this process's devices hold non-contiguous batch rows {starts} of {global_batch_size}; "
                     "order the mesh devices by process (the default of create_mesh)")
  return rows


def data_shard(mesh: Mesh, global_batch_size: int) -> tuple[int, int, int]:
  """(shard_id, num_shards, host_batch_size) of this process's input pipeline."""
  rows = host_batch_rows(mesh, global_batch_size)
  host_batch_size = rows.stop - rows.start
  return rows.start // host_batch_size, global_batch_size // host_batch_size, host_batch_size


def global_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh, global_batch_size: int) -> dict[str, jax.Array]:
  """This process's rows {name: [host_batch, ...]} -> global arrays {name: [global_batch, ...]} split over `data`."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value),
                                                       (global_batch_size, *np.shape(value)[1:]))
          for name, value in host_batch.items()}


def put_global(tree: Any, shardings: Any) -> Any:
  """Host values every process holds in full (numpy or single-device arrays) -> global arrays with `shardings`.

  Each process copies only the shards its own devices hold, so no device ever sees a whole array. Leaves that
  are already global arrays with their sharding (e.g. from `runs.initial_params` on this mesh) are kept as they
  are, never gathered.
  """

  def put(value, sharding):
    if isinstance(value, jax.Array) and value.sharding.is_equivalent_to(sharding, value.ndim):
      return value
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(put, tree, shardings)


def fetch(tree: Any) -> Any:
  """Global arrays that every process can read whole (replicated, or gathered) -> numpy on every process."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(get, tree)


def optimizer_state_shardings(abstract_opt_state: Any, abstract_params: Any, param_shardings: Any,
                              mesh: Mesh) -> Any:
  """Shardings for an optimizer state: a slot shaped like a parameter (Adam's moments, Adafactor's unfactored v)
  follows that parameter's sharding; everything else (counts, factored rows/columns) is replicated.

  A slot belongs to the parameter whose dict-key path ends its own key path, e.g. `.../mu/encoder/.../kernel`.
  """
  flat_params = {tuple(path): leaf for path, leaf in traverse_util.flatten_dict(abstract_params).items()}
  flat_shardings = traverse_util.flatten_dict(param_shardings)

  def sharding_of(key_path, leaf):
    keys = tuple(k.key for k in key_path if isinstance(k, jax.tree_util.DictKey))
    for start in range(len(keys)):
      path = keys[start:]
      if path in flat_params and tuple(flat_params[path].shape) == tuple(leaf.shape):
        return flat_shardings[path]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(sharding_of, abstract_opt_state)
