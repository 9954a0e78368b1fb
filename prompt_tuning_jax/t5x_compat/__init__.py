"""What `python -m t5x.train` / `t5x.eval` / `t5x.infer` need from this package (gin_configs/t5x/ binds it).

t5x is not a dependency: it is not on PyPI, so it is installed from its repository (see the README). Importing
this package without t5x fails with one line naming the fix; nothing else in prompt_tuning_jax imports it.

- `models.EncoderDecoderModel`: t5x's own model class around our `Transformer`, with the logical axes t5x's
  partitioner and train state read (`params_axes`) and integer dummy tokens at initialization.
- `optimizers.trainable_traversal`: the prompt-only traversal for `t5x.optimizers.MultiOptimizer`.
- `checkpointing.PromptExportingCheckpointManager`: t5x's orbax checkpoint manager, plus the prompt export
  (`numpy_checkpoints/checkpoint_N/encoder.prompt.prompt.prompt`, optionally a PEFT adapter) at every save.
"""

try:
  import t5x.models  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError(f"prompt_tuning_jax.t5x_compat needs t5x, which is not importable here ({e}); install it from "
                    "its repository as the README's 'Running under t5x' section shows") from None
