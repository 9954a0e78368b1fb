"""`python -m prompt_tuning_jax.interpret`: nearest tokens per prompt row, a PNG, the paper's two observations."""

import numpy as np
import pytest

from prompt_tuning_jax import checkpoints as checkpoint_io
from prompt_tuning_jax import demo, interpret
from prompt_tuning_jax.data import vocab
from prompt_tuning_jax.inference import nearest_neighbors


@pytest.fixture(scope="module")
def embedding():
  return np.asarray(checkpoint_io.load_params(demo.pretrained_checkpoint_path())[0]["token_embedder"]["embedding"])


def test_rows_made_of_label_embeddings_show_both_observations(tmp_path, embedding, capsys):
  vocabulary = vocab.synthetic_vocabulary()
  a, b = vocabulary.encode("red")[-1], vocabulary.encode("blue")[-1]
  other = vocabulary.encode("reverse")[-1]
  # Rows 0 and 1 both point at 'red', row 2 at 'blue' (labels of synthetic_majority), row 3 at neither.
  prompt = np.stack([2.0 * embedding[a], embedding[a] + 0.01, 0.5 * embedding[b], embedding[other]])
  path = checkpoint_io.save_prompt_npy(prompt, str(tmp_path / "prompt.npy"))
  result = interpret.interpret(interpret.parse_flags([
      f"--checkpoint={demo.pretrained_checkpoint_path()}", f"--prompt={path}", "--task=synthetic_majority",
      "--top_k=1", f"--output_png={tmp_path}/sims.png"]))
  out = capsys.readouterr().out
  assert result["shared_nearest_rows"] == 2 and "2 of 4 rows share their nearest token" in out
  assert result["label_rows"] == {"red": [0, 1], "blue": [2], "tie": []}
  assert (tmp_path / "sims.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shared_nearest_neighbors_counts_rows_not_tokens():
  count, shared = nearest_neighbors.shared_nearest_neighbors(np.array([[3, 1], [3, 2], [4, 3], [4, 0], [5, 3]]))
  assert count == 4 and shared == {3: [0, 1], 4: [2, 3]}


def test_a_prompt_for_another_model_is_one_line(tmp_path, capsys):
  path = checkpoint_io.save_prompt_npy(np.zeros((2, 16)), str(tmp_path / "p.npy"))
  with pytest.raises(SystemExit) as exit_info:
    interpret.main([f"--checkpoint={demo.pretrained_checkpoint_path()}", f"--prompt={path}",
                    "--vocabulary=synthetic"])
  assert exit_info.value.code == 1
  assert "has width 16, model embed dim is 128" in capsys.readouterr().err
