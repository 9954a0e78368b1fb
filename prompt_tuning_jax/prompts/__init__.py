"""Soft prompts: the prompt module, how it joins the inputs, and its initializers."""

from prompt_tuning_jax.prompts.initializers import (
    flax_uniform,
    from_class_labels,
    from_file,
    from_sampled_vocab,
    from_text,
    init_missing_params,
    uniform,
)
from prompt_tuning_jax.prompts.prompt import PrefixPrompt, Prompt, prefix_prompt, prefix_prompt_factory

__all__ = [
    "PrefixPrompt", "Prompt", "prefix_prompt", "prefix_prompt_factory", "flax_uniform", "from_class_labels",
    "from_file", "from_sampled_vocab", "from_text", "init_missing_params", "uniform",
]
