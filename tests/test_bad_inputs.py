"""Every bad input to the CLIs ends in one `<program>: error:` line, a documented exit status (2 usage, 1 bad
input; see training/errors.py), no traceback, and a MODEL_DIR left byte-identical.

Most cases run the CLI's `main` in this process (a CLI start costs seconds of imports); a few run the real
command in a subprocess to check exit status and stderr exactly as a shell sees them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import _training_helpers  # noqa: F401 (enables the session's compilation cache)
import numpy as np
import pytest
from _cli_helpers import (  # noqa: F401 (fresh_gin is a fixture)
    fresh_gin,
    one_error_line,
    run_eval_in_process,
    run_in_process,
    run_subprocess,
    train_flags,
    tree_digest,
    write_checkpoint,
)

from prompt_tuning_jax import demo
from prompt_tuning_jax.checkpoints import save_t5x_legacy
from prompt_tuning_jax.training import cli

USAGE, BAD_INPUT = 2, 1
FROM_FILE = "--gin_file=prompts/from_file.gin"


def _garbage_msgpack(tmp_path):
  directory = tmp_path / "garbled_checkpoint"
  directory.mkdir()
  (directory / "checkpoint").write_bytes(b"\xc1\xff\x00not msgpack at all" * 10)
  return directory


def _truncated_msgpack(tmp_path):
  model = _training_helpers.tiny_model(prompt_length=None)
  params, _ = _training_helpers.init_params(model)
  directory = save_t5x_legacy(params, str(tmp_path / "truncated_checkpoint"), step=1)
  checkpoint_file = os.path.join(directory, "checkpoint")
  with open(checkpoint_file, "rb") as f:
    raw = f.read()
  with open(checkpoint_file, "wb") as f:
    f.write(raw[:len(raw) // 2])
  return directory


def _file(tmp_path, name, content: bytes):
  path = tmp_path / name
  path.write_bytes(content)
  return path


_HOLDERS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _stop_lock_holders():
  yield
  while _HOLDERS:
    holder = _HOLDERS.pop()
    holder.kill()
    holder.wait()


def _live_holder(model_dir):
  """A lock file held by a live process on this host (a sleeping child, stopped after the test)."""
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  _HOLDERS.append(holder)
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, ".lock"), "w") as f:
    f.write(f'{{"host": "{socket.gethostname()}", "pid": {holder.pid}, "token": "x", "started": "earlier"}}')
  return holder


def _damage_all(model_dir):
  os.remove(os.path.join(model_dir, "checkpoint_2", "state", "_METADATA"))


# (case id, gin macros, extra flags, expected status, text the error line must contain)
USAGE_CASES = [
    ("misspelled_macro", {"TRAIN_STEP": "5"}, [], USAGE, "did you mean TRAIN_STEPS"),
    ("string_train_steps", {"TRAIN_STEPS": "'5'"}, [], USAGE, "TRAIN_STEPS must be an integer"),
    ("float_train_steps", {"TRAIN_STEPS": "2.5"}, [], USAGE, "TRAIN_STEPS must be an integer"),
    ("zero_train_steps", {"TRAIN_STEPS": "0"}, [], USAGE, "TRAIN_STEPS must be positive"),
    ("negative_eval_period", {"EVAL_PERIOD": "-1"}, [], USAGE, "EVAL_PERIOD must be at least 0"),
    ("zero_save_period", {"SAVE_PERIOD": "0"}, [], USAGE, "SAVE_PERIOD must be positive"),
    ("zero_batch_size", {"BATCH_SIZE": "0"}, [], USAGE, "BATCH_SIZE must be positive"),
    ("string_prompt_length", {"PROMPT_LENGTH": "'ten'"}, [], USAGE, "PROMPT_LENGTH must be an integer"),
    ("unquoted_model_dir", {"MODEL_DIR": "42"}, [], USAGE, "MODEL_DIR must be a string"),
    ("zero_eval_examples", {"runs.train.eval_num_examples": "0"}, [], USAGE, "eval_num_examples must be positive"),
    ("unknown_data_sharding", {"runs.train.data_sharding": "'per_host'"}, [], USAGE,
     "data_sharding='per_host' is not one of 'source', 'global'"),
    ("gin_syntax_error", {"TRAIN_STEPS": "(4"}, [], USAGE, "gin config"),
    ("unknown_gin_parameter", {"runs.train.no_such_parameter": "1"}, [], USAGE, "no_such_parameter"),
    ("missing_gin_file", {}, ["--gin_file=runs/no_such_run.gin"], USAGE, "gin file runs/no_such_run.gin not found"),
    ("unknown_flag", {}, ["--no_such_flag=1"], USAGE, "unrecognized arguments: --no_such_flag=1"),
    ("incomplete_multiprocess_flags", {}, ["--process_count=2"], USAGE, "multi-process flags are incomplete"),
]


@pytest.mark.parametrize("case, macros, extra, status, text", USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_bad_command_line_is_one_line_and_writes_nothing(tmp_path, case, macros, extra, status, text):
  model_dir = write_checkpoint(str(tmp_path / "model_dir"))
  before = tree_digest(model_dir)
  code, stderr = run_in_process(train_flags(model_dir, **macros) + extra)
  line = one_error_line(stderr)
  assert code == status, (code, line)
  assert text in line, line
  assert tree_digest(model_dir) == before


def test_eval_with_zero_examples_is_a_usage_error(tmp_path):
  model_dir = write_checkpoint(str(tmp_path / "model_dir"))
  before = tree_digest(model_dir)
  flags = ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=models/prompt.gin", "--gin_file=prompts/from_uniform.gin",
           "--gin_file=runs/prompt_eval.gin", f"--gin.MODEL_DIR={model_dir!r}",
           "--gin.MIXTURE_OR_TASK_NAME='synthetic_reverse'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}",
           "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.PROMPT_LENGTH=4", "--gin.config.T5Config.vocab_size=136",
           "--gin.runs.evaluate.num_examples=0"]
  code, stderr = run_eval_in_process(flags)
  line = one_error_line(stderr, "eval")
  assert code == USAGE and "num_examples must be positive" in line, line
  assert tree_digest(model_dir) == before


# (case id, setup(tmp_path, model_dir) -> macros and flags, expected text). All exit with status 1.
def _input_cases():
  return [
      ("train_steps_below_steps_done", lambda t, d: ({"TRAIN_STEPS": "1"}, []), "already holds 2 steps"),
      ("resume_with_other_prompt_length", lambda t, d: ({"PROMPT_LENGTH": "6"}, []), "original PROMPT_LENGTH"),
      # The fixture's optimizer state is plain Adafactor's, not the run's (prompt_finetune.gin's settings).
      ("resume_with_other_optimizer", lambda t, d: ({}, []), "with the original optimizer"),
      ("no_intact_checkpoint", lambda t, d: (_damage_all(d) or {}, []), "holds no checkpoint that can be restored"),
      ("model_dir_in_use", lambda t, d: (_live_holder(d) and {}, []), "is in use by another run (pid"),
      ("unknown_task", lambda t, d: ({"MIXTURE_OR_TASK_NAME": "'synthetic_revers'"}, []), "synthetic_reverse"),
      ("garbled_msgpack_checkpoint", lambda t, d: ({"INITIAL_CHECKPOINT_PATH": repr(str(_garbage_msgpack(t)))}, []),
       "garbled_checkpoint/checkpoint is not a readable msgpack file"),
      ("truncated_msgpack_checkpoint", lambda t, d: ({"INITIAL_CHECKPOINT_PATH": repr(_truncated_msgpack(t))}, []),
       "checkpoint_1/checkpoint is not a readable msgpack file"),
      ("empty_npy_prompt", lambda t, d: ({"PROMPT_FILE": repr(str(_file(t, "empty.npy", b"")))}, [FROM_FILE]),
       "empty.npy is empty (0 bytes)"),
      ("text_npy_prompt", lambda t, d: ({"PROMPT_FILE": repr(str(_file(t, "text.npy", b"0.1 0.2\n")))},
                                        [FROM_FILE]), "text.npy is not a .npy file"),
      ("truncated_npy_prompt", lambda t, d: ({"PROMPT_FILE": repr(str(_truncated_npy(t)))}, [FROM_FILE]),
       "truncated.npy is a damaged or truncated .npy"),
      ("not_a_sentencepiece_vocabulary", lambda t, d: (_t5_task_with_vocab(str(_file(t, "vocab.model", b"x\n"))), []),
       "vocab.model is not a SentencePiece model"),
      ("unreachable_gs_vocabulary", lambda t, d: (_t5_task_with_vocab("gs://prompt-tuning-jax-no-such-bucket/spm.model"),
                                                  []), "--gin.vocab.t5_vocabulary.sentencepiece_model_file="),
  ]


def _truncated_npy(tmp_path):
  path = tmp_path / "truncated.npy"
  np.save(path, np.ones((4, 32), np.float32))
  path.write_bytes(path.read_bytes()[:200])
  return path


def _t5_task_with_vocab(spm_path: str) -> dict[str, str]:
  """A SuperGLUE task (T5's vocabulary, read before any data) with the vocabulary file replaced."""
  return {"MIXTURE_OR_TASK_NAME": "'super_glue_rte_v102'",
          "vocab.t5_vocabulary.sentencepiece_model_file": repr(spm_path)}


INPUT_CASES = _input_cases()


@pytest.mark.parametrize("case, setup, text", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_bad_input_is_one_line_status_1_and_writes_nothing(tmp_path, case, setup, text):
  model_dir = write_checkpoint(str(tmp_path / "model_dir"))
  macros, extra = setup(tmp_path, model_dir)
  if extra == [FROM_FILE]:
    flags = train_flags(model_dir, prompt_init=FROM_FILE, **macros)
  else:
    flags = train_flags(model_dir, **macros) + extra
  before = tree_digest(model_dir)
  code, stderr = run_in_process(flags)
  line = one_error_line(stderr)
  assert code == BAD_INPUT, (code, line)
  assert text in line, line
  assert tree_digest(model_dir) == before


def test_a_refused_run_leaves_no_new_model_dir(tmp_path):
  model_dir = tmp_path / "new_model_dir"
  code, stderr = run_in_process(train_flags(model_dir, MIXTURE_OR_TASK_NAME="'synthetic_revers'"))
  assert code == BAD_INPUT and one_error_line(stderr)
  assert not model_dir.exists()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# Real subprocesses: the exit status and the whole of stderr as a shell sees them (no banners, no traceback).
SUBPROCESS_CASES = [
    ("misspelled_macro", lambda t: train_flags(t / "run", TRAIN_STEP="5"), USAGE, "did you mean TRAIN_STEPS"),
    ("empty_npy_prompt", lambda t: train_flags(t / "run", prompt_init=FROM_FILE,
                                               PROMPT_FILE=repr(str(_file(t, "empty.npy", b"")))),
     BAD_INPUT, "is empty (0 bytes)"),
    ("missing_peer", lambda t: train_flags(t / "run") + [
        f"--coordinator_address=127.0.0.1:{_free_port()}", "--process_count=2", "--process_index=0",
        "--distributed_timeout_s=3"], BAD_INPUT, "could not reach all processes"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, flags, status, text", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_cli_subprocess_prints_exactly_one_line(tmp_path, case, flags, status, text):
  result = run_subprocess(flags(tmp_path))
  line = one_error_line(result.stderr)
  assert result.returncode == status, (result.returncode, line)
  assert text in line, line
  assert result.stdout == ""


def test_help_shows_the_gin_binding_form_the_main_macros_and_the_exit_statuses(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_flags(["--help"], "Trains a prompt.", "train")
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  assert "--gin.NAME=VALUE" in text and "--gin.MODEL_DIR=\"'/tmp/run'\"" in text
  assert all(macro in text for macro in ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TRAIN_STEPS", "PROMPT_LENGTH"))
  assert "2 usage" in text and "130 / 143" in text


def test_demo_refuses_to_replace_a_longer_run_without_fresh(tmp_path):
  model_dir = tmp_path / "demo_run"
  (model_dir / demo.PROMPT_TUNING_DIR / "checkpoint_300").mkdir(parents=True)
  (model_dir / demo.MARKER_FILE).write_text("{}")
  before = tree_digest(model_dir)
  code, stderr = run_in_process(["--model_dir", str(model_dir), "--train_steps", "100"], program=demo)
  line = one_error_line(stderr, "demo")
  assert code == BAD_INPUT and "holds a run of 300 steps" in line and "--fresh" in line, line
  assert tree_digest(model_dir) == before
