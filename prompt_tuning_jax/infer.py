r"""Predicts with trained prompts, t5x-style: one frozen model serves a bank of prompts in mixed batches.

  python -m prompt_tuning_jax.infer \
    --gin_file=models/t5_1_1_base.gin --gin_file=runs/prompt_infer.gin \
    --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/t5_1_1_lm100k_base/checkpoint_1100000'" \
    --prompt=rte=/runs/rte --prompt=boolq=/prompts/boolq.npy \
    --input_file=inputs.jsonl --output_file=predictions.jsonl

  --prompt=NAME=PATH   (repeatable) a bank prompt: .npy, encoder.prompt.prompt.prompt, PEFT adapter dir, or a
                       training MODEL_DIR / checkpoint_N; --prompt=DIR takes every prompt in DIR, named by file
  --input_file=FILE    JSONL ({"inputs": ..., "prompt"|"task": ...}) or TSV (inputs<TAB>prompt); without it,
                       --gin.MIXTURE_OR_TASK_NAME's INFER_SPLIT is read
  --output_file=FILE   predictions JSONL (line, input, prediction, score, prompt)
Decoding: --gin.DECODE_METHOD="'beam'" (greedy, beam, sample), NUM_BEAMS, ALPHA, TEMPERATURE, TOP_K, TOP_P, SEED,
MAX_DECODE_LENGTH; BATCH_SIZE, MAX_INPUT_LENGTH (longer inputs are truncated and counted). An ensemble:
--gin.ENSEMBLE="'a,b,c'" answers every line with those K bank prompts in one pass and majority-votes.
Lines that cannot be read or name an unknown prompt are reported and skipped; the exit status is then 1.
Flags: see `training/cli.py`.
"""

import argparse
import sys

from prompt_tuning_jax.training import native_logs

native_logs.quiet_imports()  # before TensorFlow and jax are imported below

from prompt_tuning_jax.inference import batch_infer  # noqa: E402
from prompt_tuning_jax.training import cli  # noqa: E402


def _own_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """--prompt/--input_file/--output_file as gin bindings (PROMPTS, INPUT_FILE, OUTPUT_FILE) + the other flags."""
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--prompt", action="append", default=[])
  parser.add_argument("--input_file", default=None)
  parser.add_argument("--output_file", default=None)
  args, rest = parser.parse_known_args(argv)
  bindings = [f"--gin.PROMPTS={args.prompt!r}"] if args.prompt else []
  bindings += [f"--gin.{macro}={value!r}" for macro, value in (("INPUT_FILE", args.input_file),
                                                              ("OUTPUT_FILE", args.output_file)) if value]
  return rest, bindings


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__)
    return
  rest, bindings = _own_flags(argv)
  summary = cli.run(rest + bindings, __doc__.splitlines()[0], "infer", batch_infer.infer)
  print(f"infer: {summary.predicted} predictions written to {summary.output_file}", file=sys.stderr)
  if summary.truncated:
    print(f"infer: {summary.truncated} input(s) longer than MAX_INPUT_LENGTH were truncated to it (EOS kept)",
          file=sys.stderr)
  if summary.table:
    print("\n".join(summary.table))
  if summary.skipped:
    print(f"infer: {len(summary.skipped)} lines skipped:", file=sys.stderr)
    for message in summary.skipped:
      print(f"  {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
