"""Writes tests/fixtures/t5x/: a tiny T5 1.1 parameter tree saved by t5x itself, in both of its checkpoint formats.

  .venv/bin/python scripts/make_t5x_fixtures.py   # needs t5x (bash /work/shared/vendor/t5x/install.sh)

Output (committed, about 40 kB):
  params.npz                       the parameters, '/'-joined T5X paths -> float32 arrays (the expected values)
  legacy/checkpoint_3/             t5x.checkpoints.Checkpointer: msgpack `checkpoint` + zarr arrays
  orbax/checkpoint_3/              t5x.checkpoints.OrbaxCheckpointManagerInterface: `state/` (OCDBT)
Both hold the Adafactor train state t5x builds for these parameters, at step 3. The model is `FIXTURE_CONFIG`,
small enough to commit; tests/test_checkpoints_t5x_foreign.py reads the files with our loaders.
"""

from __future__ import annotations

import os
import shutil
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from prompt_tuning_jax.model import T5Config, Transformer  # noqa: E402

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "t5x")
FIXTURE_CONFIG = T5Config(vocab_size=32, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16, num_encoder_layers=1,
                          num_decoder_layers=1, relative_attention_num_buckets=8,
                          relative_attention_max_distance=16)
STEP = 3


def fixture_params() -> tuple[dict, dict]:
  """(params as numpy, logical axis names per parameter) of the fixture model."""
  tokens = jnp.ones((1, 4), jnp.int32)
  boxed = Transformer(FIXTURE_CONFIG).init(jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False)
  params = jax.tree.map(np.asarray, nn.meta.unbox(boxed["params"]))
  # Layer-norm scales initialize to ones; distinct values show a loader that swaps or drops one.
  rng = np.random.RandomState(0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + rng.uniform(-0.5, 0.5, x.shape).astype(x.dtype) if path[-1].key == "scale" else x, params)
  return params, nn.get_partition_spec(boxed["params"])


def _t5x_train_state(params: dict, axes: dict):
  """t5x's own train state for `params`: its Adafactor, with the `params_axes` collection flaxformer emits."""
  from flax.linen import partitioning as flax_partitioning
  from t5x import adafactor, train_state

  flat_axes = traverse_util.flatten_dict(axes, is_leaf=lambda _, x: isinstance(x, jax.sharding.PartitionSpec))
  params_axes = traverse_util.unflatten_dict({(*path[:-1], f"{path[-1]}_axes"): flax_partitioning.AxisMetadata(
      names=tuple(spec)) for path, spec in flat_axes.items()})
  optimizer = adafactor.Adafactor(learning_rate=0.1, factored=False)
  state = train_state.FlaxOptimTrainState.create(
      optimizer, {"params": jax.tree.map(jnp.asarray, params), "params_axes": params_axes})
  return state.replace_step(jnp.asarray(STEP, jnp.int32))


def main() -> None:
  try:
    from t5x import checkpoints, partitioning
  except ImportError as e:
    sys.exit(f"make_t5x_fixtures: error: t5x is not importable ({e}); run bash /work/shared/vendor/t5x/install.sh")
  params, axes = fixture_params()
  shutil.rmtree(FIXTURE_DIR, ignore_errors=True)
  os.makedirs(FIXTURE_DIR)
  np.savez(os.path.join(FIXTURE_DIR, "params.npz"), **traverse_util.flatten_dict(params, sep="/"))
  partitioner = partitioning.PjitPartitioner(num_partitions=1)
  state = _t5x_train_state(params, axes)
  checkpoints.Checkpointer(state, partitioner, os.path.join(FIXTURE_DIR, "legacy")).save(state)
  orbax_dir = os.path.join(FIXTURE_DIR, "orbax")
  os.makedirs(orbax_dir)  # t5x falls back to the parent of a directory that does not exist yet
  manager = checkpoints.OrbaxCheckpointManagerInterface(orbax_dir, state, partitioner)
  manager.save(state)
  manager.close()
  for root, _, files in sorted(os.walk(FIXTURE_DIR)):
    for name in sorted(files):
      path = os.path.join(root, name)
      print(f"{os.path.getsize(path):8d}  {os.path.relpath(path, FIXTURE_DIR)}")


if __name__ == "__main__":
  main()
