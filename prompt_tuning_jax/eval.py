r"""Evaluates a trained prompt (or model) on a task's split, t5x-style.

  python -m prompt_tuning_jax.eval \
    --gin_file=models/t5_1_1_base.gin --gin_file=models/prompt.gin --gin_file=prompts/from_uniform.gin \
    --gin_file=runs/prompt_eval.gin \
    --gin.CHECKPOINT_PATH="'/tmp/rte_prompt/checkpoint_30000'" --gin.EVAL_OUTPUT_DIR="'/tmp/rte_eval'" \
    --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'" \
    --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/t5_1_1_lm100k_base/checkpoint_1100000'"

Flags: see `training/cli.py`.
"""

import sys

from prompt_tuning_jax.training import cli, runs


def main(argv: list[str] | None = None) -> None:
  cli.run(sys.argv[1:] if argv is None else argv, __doc__.splitlines()[0], "eval", runs.evaluate)


if __name__ == "__main__":
  main()
