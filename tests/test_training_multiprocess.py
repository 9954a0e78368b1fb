"""Two processes on localhost (CPU collectives over gloo) train together and agree with one process."""

import os
import sys

import _training_helpers as helpers
import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "_training_helpers.py")
TIMEOUT_S = 240


def _run_two_workers(tmp_path, *extra: str) -> list[str]:
  """Runs both processes of the job (extra: the worker's optional arguments); returns their output files."""
  outputs = [str(tmp_path / f"out_{i}.npy") for i in range(2)]
  helpers.run_two_processes(
      lambda coordinator, i: [sys.executable, WORKER, coordinator, str(i), str(tmp_path / "model"), outputs[i],
                              *extra],
      TIMEOUT_S)
  return outputs


@pytest.mark.slow
def test_two_processes_train_together_and_match_a_single_process(tmp_path):
  outputs = _run_two_workers(tmp_path)
  prompts = [np.load(path) for path in outputs]
  np.testing.assert_array_equal(prompts[0], prompts[1])
  assert sorted(os.listdir(tmp_path / "model" / "numpy_checkpoints")) == ["checkpoint_2", "checkpoint_4"]
  # One process with 4 devices sees the same examples in each global batch (in another row order).
  state, _, _ = helpers.train_tiny(str(tmp_path / "single"), steps=4, mesh_shape=(4, 1), save_period=2)
  np.testing.assert_allclose(prompts[0], helpers.prompt_of(state.trainable), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sigterm_on_one_process_stops_both_after_the_same_saved_step(tmp_path):
  # Process 0 is signalled as it starts step 5; the processes compare flags at their next metric report (step 8,
  # log_period 4), and both save and stop there.
  outputs = _run_two_workers(tmp_path, "5")
  stopped = [np.load(path).tolist() for path in outputs]
  assert stopped == [[8, 15], [8, 15]]  # step 8, SIGTERM
  assert sorted(os.listdir(tmp_path / "model" / "numpy_checkpoints")) == ["checkpoint_8"]
  assert (tmp_path / "model" / "checkpoint_8").is_dir()
