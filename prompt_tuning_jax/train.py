r"""Trains a prompt (or fine-tunes, or pretrains) T5 1.1, t5x-style.

  python -m prompt_tuning_jax.train \
    --gin_file=models/t5_1_1_base.gin --gin_file=models/prompt.gin --gin_file=prompts/from_class_labels.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin.MODEL_DIR="'/tmp/rte_prompt'" --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'" \
    --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/t5_1_1_lm100k_base/checkpoint_1100000'"

Re-running the same command resumes from MODEL_DIR's latest checkpoint. Flags: see `training/cli.py`.
"""

import sys

from prompt_tuning_jax.training import native_logs

native_logs.quiet_imports()  # before TensorFlow and jax are imported below

from prompt_tuning_jax.training import cli, runs  # noqa: E402


def main(argv: list[str] | None = None) -> None:
  cli.run(sys.argv[1:] if argv is None else argv, __doc__.splitlines()[0], "train", runs.train)


if __name__ == "__main__":
  main()
