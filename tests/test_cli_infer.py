"""`python -m prompt_tuning_jax.infer`: a bank of prompts over a JSONL/TSV file or a task split, bad lines skipped."""

import json

import gin
import numpy as np
import pytest

from prompt_tuning_jax import infer

GIN = ["--gin_file=demo/t5_1_1_demo.gin", "--gin_file=runs/prompt_infer.gin", "--gin_file=demo/infer.gin",
       "--gin.BATCH_SIZE=4"]


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("bank")
  rng = np.random.default_rng(0)
  for name, length in (("short", 1), ("long", 20)):
    np.save(directory / f"{name}.npy", rng.uniform(-0.5, 0.5, (length, 128)).astype(np.float32))
  return directory


def _run(argv, capsys):
  gin.clear_config()
  try:
    infer.main(GIN + argv)
    code = 0
  except SystemExit as e:
    code = e.code
  finally:
    gin.clear_config()
  captured = capsys.readouterr()
  return code, captured.err + captured.out  # messages go to stderr, the ensemble table to stdout


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_bad_lines_are_reported_and_skipped_and_the_rest_is_predicted(tmp_path, prompt_dir, capsys):
  lines = ['{"inputs": "k d a f", "prompt": "short"}', "", "not json", '{"inputs": "c b a", "prompt": "nope"}',
           '{"inputs": "c b a", "task": "long", "targets": "a b c"}', '{"inputs": "' + "a " * 30 + '"}']
  (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
  code, err = _run([f"--prompt={prompt_dir}", f"--input_file={tmp_path}/in.jsonl",
                    f"--output_file={tmp_path}/out.jsonl", "--gin.DEFAULT_PROMPT='short'"], capsys)
  assert code == 1
  assert "in.jsonl:2: is empty" in err and "in.jsonl:3: is not JSON" in err
  assert "in.jsonl:4: no prompt named 'nope' in the bank (long, short)" in err
  assert "3 predictions written" in err and "3 lines skipped" in err
  assert "1 input(s) longer than MAX_INPUT_LENGTH were truncated" in err
  out = _lines(tmp_path / "out.jsonl")
  assert [o["line"] for o in out] == [1, 5, 6]
  assert [o["prompt"] for o in out] == ["short", "long", "short"]
  assert out[1]["targets"] == "a b c" and all(isinstance(o["prediction"], str) for o in out)


def test_a_mixed_file_predicts_as_each_prompt_alone(tmp_path, prompt_dir, capsys):
  rows = [("k d a f", "long"), ("b c", "short"), ("a b e g", "long")]
  (tmp_path / "mixed.tsv").write_text("".join(f"{x}\t{p}\n" for x, p in rows))
  assert _run([f"--prompt={prompt_dir}", f"--input_file={tmp_path}/mixed.tsv",
               f"--output_file={tmp_path}/mixed.jsonl"], capsys)[0] == 0
  mixed = _lines(tmp_path / "mixed.jsonl")
  for i, (x, p) in enumerate(rows):
    (tmp_path / "one.tsv").write_text(f"{x}\t{p}\n")
    assert _run([f"--prompt={p}={prompt_dir}/{p}.npy", f"--input_file={tmp_path}/one.tsv",
                 f"--output_file={tmp_path}/one.jsonl"], capsys)[0] == 0
    assert _lines(tmp_path / "one.jsonl")[0]["prediction"] == mixed[i]["prediction"]


def test_a_task_split_is_read_with_its_targets(tmp_path, prompt_dir, capsys):
  code, _ = _run([f"--prompt=taskless_synthetic_reverse={prompt_dir}/long.npy", f"--output_file={tmp_path}/t.jsonl",
                  "--gin.MIXTURE_OR_TASK_NAME='taskless_synthetic_reverse'", "--gin.INFER_NUM_EXAMPLES=3",
                  "--gin.DECODE_METHOD='beam'", "--gin.NUM_BEAMS=2"], capsys)
  assert code == 0
  out = _lines(tmp_path / "t.jsonl")
  assert len(out) == 3 and all(o["prompt"] == "taskless_synthetic_reverse" and o["targets"] for o in out)


def test_a_missing_prompt_file_fails_before_writing(tmp_path, capsys):
  (tmp_path / "in.jsonl").write_text('{"inputs": "a"}\n')
  code, err = _run([f"--prompt=x={tmp_path}/missing.npy", f"--input_file={tmp_path}/in.jsonl",
                    f"--output_file={tmp_path}/out.jsonl"], capsys)
  assert code == 1 and err.strip().splitlines()[-1].startswith("infer: error: prompt file")
  assert "missing.npy does not exist" in err
  assert not (tmp_path / "out.jsonl").exists()


def test_bad_decoding_options_fail_before_writing(tmp_path, prompt_dir, capsys):
  (tmp_path / "in.jsonl").write_text('{"inputs": "a b"}\n')
  code, err = _run([f"--prompt=s={prompt_dir}/short.npy", f"--input_file={tmp_path}/in.jsonl",
                    f"--output_file={tmp_path}/out.jsonl", "--gin.DECODE_METHOD='sample'", "--gin.TOP_P=1.5"],
                   capsys)
  assert code == 1 and "top_p must be in (0, 1]" in err
  assert not (tmp_path / "out.jsonl").exists()


def test_two_prompts_of_one_name_are_refused(tmp_path, prompt_dir, capsys):
  (tmp_path / "in.jsonl").write_text('{"inputs": "a b"}\n')
  code, err = _run([f"--prompt=s={prompt_dir}/short.npy", f"--prompt=s={prompt_dir}/long.npy",
                    f"--input_file={tmp_path}/in.jsonl", f"--output_file={tmp_path}/out.jsonl"], capsys)
  assert code == 1 and "two prompts named 's'" in err


def test_an_ensemble_votes_on_every_line_and_reports_table_3(tmp_path, prompt_dir, capsys):
  lines = ['{"inputs": "k d a f", "targets": "f a d k"}', '{"inputs": "b c", "targets": "c b"}']
  (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
  code, printed = _run([f"--prompt={prompt_dir}", f"--prompt=again={prompt_dir}/short.npy",
                  f"--input_file={tmp_path}/in.jsonl", f"--output_file={tmp_path}/out.jsonl",
                  "--gin.ENSEMBLE='short,long,again'"], capsys)
  assert code == 0
  out = _lines(tmp_path / "out.jsonl")
  for o in out:
    answers = o["answers"]
    assert list(answers) == ["short", "long", "again"] and answers["short"] == answers["again"]
    assert o["prediction"] == answers["short"] and o["votes"] >= 2  # two copies of one prompt outvote the third
  rows = [line.split()[0] for line in printed.splitlines() if line.split()[:1] in (["short"], ["long"], ["again"],
                                                                                    ["mean"], ["best"], ["ensemble"])]
  assert rows == ["short", "long", "again", "mean", "best", "ensemble"]


def test_an_ensemble_of_no_prompts_is_refused(tmp_path, prompt_dir, capsys):
  (tmp_path / "in.jsonl").write_text('{"inputs": "a b"}\n')
  code, err = _run([f"--prompt={prompt_dir}", f"--input_file={tmp_path}/in.jsonl",
                    f"--output_file={tmp_path}/out.jsonl", "--gin.ENSEMBLE=[]"], capsys)
  assert code == 1 and "K >= 1" in err
