"""The sweep tests' gin stack: the tiny random T5 prompt-tuned on a synthetic task for a few steps."""

from __future__ import annotations

import gin

from prompt_tuning_jax import sweep

STACK = ["models/t5_1_1_tiny.gin", "models/prompt.gin", "runs/prompt_finetune.gin"]


def flags(sweep_dir, *extra: str, _stack: bool = True, **macros: str) -> list[str]:
  """The sweep command line for `sweep_dir`: a 2-cell grid (lengths 2 and 4, uniform, seed 0) by default.

  `_stack=False` leaves out STACK's gin files (pass them in `extra`, e.g. with a model axis); a macro given as
  None is left out.
  """
  values = {"MIXTURE_OR_TASK_NAME": "'synthetic_reverse'",
            "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 10}",
            "INITIAL_CHECKPOINT_PATH": "None", "TRAIN_STEPS": "4", "BATCH_SIZE": "8", "EVAL_PERIOD": "2",
            "SAVE_PERIOD": "2", "config.T5Config.vocab_size": "136",  # the synthetic vocabulary has 135 ids
            "runs.train.eval_num_examples": "8", "runs.train.async_checkpointing": "False",
            "runs.train.log_period": "1",
            "Grid.lengths": "[2, 4]", "Grid.inits": "['uniform']", "Grid.seeds": "[0]"}
  values.update(macros)
  return ([f"--sweep_dir={sweep_dir}"] + [f"--gin_file={f}" for f in (STACK if _stack else [])]
          + [f"--gin.{name}={value}" for name, value in values.items() if value is not None] + list(extra))


def run(sweep_dir, *extra: str, _stack: bool = True, **macros: str) -> dict:
  gin.clear_config()
  try:
    return sweep.run(flags(sweep_dir, *extra, _stack=_stack, **macros))
  finally:
    gin.clear_config()
