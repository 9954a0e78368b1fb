"""Two processes on localhost (CPU collectives over gloo) train together and agree with one process."""

import os
import sys

import _training_helpers as helpers
import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "_training_helpers.py")
TIMEOUT_S = 240


@pytest.mark.slow
def test_two_processes_train_together_and_match_a_single_process(tmp_path):
  outputs = [str(tmp_path / f"prompt_{i}.npy") for i in range(2)]
  helpers.run_two_processes(
      lambda coordinator, i: [sys.executable, WORKER, coordinator, str(i), str(tmp_path / "model"), outputs[i]],
      TIMEOUT_S)
  prompts = [np.load(path) for path in outputs]
  np.testing.assert_array_equal(prompts[0], prompts[1])
  assert sorted(os.listdir(tmp_path / "model" / "numpy_checkpoints")) == ["checkpoint_2", "checkpoint_4"]
  # One process with 4 devices sees the same examples in each global batch (in another row order).
  state, _, _ = helpers.train_tiny(str(tmp_path / "single"), steps=4, mesh_shape=(4, 1), save_period=2)
  np.testing.assert_allclose(prompts[0], helpers.prompt_of(state.trainable), rtol=1e-4, atol=1e-5)
