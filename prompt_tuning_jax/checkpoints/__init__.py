"""Checkpoint and prompt-file I/O: T5X (legacy msgpack + zarr, orbax), Hugging Face T5 1.1, prompt files.

Each module's docstring describes its format; every reader returns nested dicts of numpy arrays with T5X names.
"""

from prompt_tuning_jax.checkpoints.hf import load_hf_t5, save_hf_t5
from prompt_tuning_jax.checkpoints.inferred_config import check_config, infer_config
from prompt_tuning_jax.checkpoints.params import (
    check_params_match,
    checkpoint_step,
    load_param,
    load_params,
    merge_frozen,
)
from prompt_tuning_jax.checkpoints.prompt_files import (
    export_numpy_checkpoint,
    load_prompt,
    save_peft_adapter,
    save_prompt_npy,
)
from prompt_tuning_jax.checkpoints.t5x import (
    load_t5x_legacy,
    load_t5x_orbax,
    load_t5x_step,
    save_t5x_legacy,
    save_t5x_orbax,
)

__all__ = [
    "check_config", "check_params_match", "checkpoint_step", "export_numpy_checkpoint", "infer_config",
    "load_hf_t5", "load_param", "load_params", "load_prompt", "load_t5x_legacy", "load_t5x_orbax", "load_t5x_step",
    "merge_frozen", "save_hf_t5", "save_peft_adapter", "save_prompt_npy", "save_t5x_legacy", "save_t5x_orbax",
]
