r"""Evaluates a trained prompt (or model) on a task's split, t5x-style; prints the metrics as one JSON line.

  python -m prompt_tuning_jax.eval \
    --gin_file=models/t5_1_1_base.gin --gin_file=models/prompt.gin --gin_file=prompts/from_uniform.gin \
    --gin_file=runs/prompt_eval.gin \
    --gin.MODEL_DIR="'/tmp/rte_prompt'" --gin.CHECKPOINT_PATH="'/tmp/rte_prompt/checkpoint_30000'" \
    --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'" --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \
    --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/t5_1_1_lm100k_base/checkpoint_1100000'"

Metrics also go to EVAL_OUTPUT_DIR (default MODEL_DIR): eval_metrics.jsonl (not the training run's metrics.jsonl),
TensorBoard events in eval_<split>/, eval_config.gin.
Flags: see `training/cli.py`.
"""

import json
import sys

from prompt_tuning_jax.training import native_logs

native_logs.quiet_imports()  # before TensorFlow and jax are imported below

import jax  # noqa: E402

from prompt_tuning_jax.training import cli, runs  # noqa: E402


def main(argv: list[str] | None = None) -> None:
  metrics = cli.run(sys.argv[1:] if argv is None else argv, __doc__.splitlines()[0], "eval", runs.evaluate)
  if jax.process_index() == 0:
    print(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
  main()
