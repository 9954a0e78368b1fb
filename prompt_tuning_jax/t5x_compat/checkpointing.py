"""t5x's orbax checkpoint manager, plus this package's prompt export at every save.

The reference implementation exports the prompt from a subclass of t5x's legacy `Checkpointer`, which current
t5x no longer calls (it saves through `checkpoints.OrbaxCheckpointManagerInterface`). This subclass of that
interface writes, after each save, the prompt of the saved train state as
`MODEL_DIR/numpy_checkpoints/checkpoint_N/encoder.prompt.prompt.prompt` (`training.checkpointing.export_prompt`,
the same exporter our trainer uses; N is t5x's global step) and, when `export_peft` is given, a PEFT adapter
under `MODEL_DIR/peft_adapters/checkpoint_N/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import traverse_util
from t5x import checkpoints as t5x_checkpoints

from prompt_tuning_jax.training import checkpointing, partitioning

PROMPT_PATH = "encoder/prompt/prompt/prompt"


class PromptExportingCheckpointManager(t5x_checkpoints.OrbaxCheckpointManagerInterface):
  """`OrbaxCheckpointManagerInterface` that also exports the prompt of every checkpoint it saves.

  Bind it as both `utils.SaveCheckpointConfig.checkpoint_manager_cls` and
  `utils.RestoreCheckpointConfig.checkpoint_manager_cls` (t5x requires the two to match).

  Args (beyond t5x's, which it passes on):
    export_peft: keyword arguments of `prompt_files.save_peft_adapter` (num_layers, num_attention_heads, ...)
      to also write a PEFT adapter per save, or None.
  """

  def __init__(self, *args: Any, export_peft: Mapping[str, Any] | None = None, **kwargs: Any):
    super().__init__(*args, **kwargs)
    self._export_peft = dict(export_peft) if export_peft is not None else None

  def save(self, train_state: Any, state_transformation_fns: Any = (), force: bool = True) -> bool:
    """Saves `train_state` as t5x does, then exports its prompt (on process 0). Returns whether it saved."""
    saved = super().save(train_state, state_transformation_fns, force)
    if saved:
      params = traverse_util.flatten_dict(dict(train_state.params), sep="/")
      if PROMPT_PATH in params:  # a model without a prompt saves as plain t5x does
        prompt = partitioning.fetch(params[PROMPT_PATH])  # replicated: every process can read it
        if jax.process_index() == 0:
          step = int(partitioning.fetch(train_state.step))
          checkpointing.export_prompt(prompt, str(self.directory), step, self._export_peft)
    return saved
