"""The soft prompt: one trainable [prompt_length, embed] parameter, and how it joins the embedded inputs.

Parameter path inside the T5 encoder: `encoder/prompt/prompt/prompt` (the reference implementation's path, so its
prompt checkpoints and `encoder.prompt.prompt.prompt` numpy exports load unrenamed): `PrefixPrompt` is the
encoder's `prompt` submodule, `Prompt` its `prompt` child, `prompt` the parameter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning_jax.prompts import initializers

Array = jax.Array
# init(rng, shape [prompt_length, embed], embedding [vocab, embed]) -> [prompt_length, embed]
PromptInit = Callable[[Array, tuple[int, int], Array], Array]


class Prompt(nn.Module):
  """Owns the prompt parameter [length, embed] (logical axes `prompt`, `prompt_embed`)."""

  length: int
  init: PromptInit = initializers.uniform()

  @nn.compact
  def __call__(self, embedding: Array) -> Array:
    """Returns the prompt [length, embed]; `embedding` [vocab, embed] is only read by initializers."""
    if self.length <= 0:
      raise ValueError(f"prompt length must be positive, got {self.length}; set PROMPT_LENGTH")
    shape = (self.length, embedding.shape[-1])
    init = nn.with_logical_partitioning(self.init, ("prompt", "prompt_embed"))
    return self.param("prompt", init, shape, embedding)


def prefix_prompt(prompt: Array, embedded_inputs: Array) -> Array:
  """Prepends the prompt to every example: [prompt, embed] + [batch, length, embed] -> [batch, prompt + length, embed]."""
  batch = embedded_inputs.shape[0]
  prompt = jnp.broadcast_to(prompt.astype(embedded_inputs.dtype), (batch, *prompt.shape))
  return jnp.concatenate([prompt, embedded_inputs], axis=1)


class PrefixPrompt(nn.Module):
  """The encoder's prompt: a `Prompt` combined with the embedded inputs by `combine` (default: prepend)."""

  length: int
  init: PromptInit = initializers.uniform()
  combine: Callable[[Array, Array], Array] = prefix_prompt

  @nn.compact
  def __call__(self, embedded_inputs: Array, embedding: Array) -> Array:
    """[batch, length, embed] -> [batch, prompt_length + length, embed]."""
    prompt = Prompt(self.length, self.init, name="prompt")(embedding)
    return self.combine(prompt, embedded_inputs)


def prefix_prompt_factory(length: int, init: PromptInit = initializers.uniform(),
                          combine: Callable[[Array, Array], Array] = prefix_prompt) -> Callable[..., PrefixPrompt]:
  """The Transformer's `prompt_factory`: `PrefixPrompt` with its settings bound now, as plain values.

  gin binds `t5.Transformer.prompt_factory = @prompts.prefix_prompt_factory()`: the call runs while gin parses,
  so the model holds a `functools.partial` of the plain class and applies the same after `gin.clear_config()`.
  (Binding `@prompts.PrefixPrompt` itself would hand the model gin's wrapper, which reads `length` from gin's
  config whenever flax constructs the module, i.e. at every `init`/`apply`.)
  """
  if length <= 0:
    raise ValueError(f"prompt length must be positive, got {length}; set PROMPT_LENGTH")
  return functools.partial(PrefixPrompt, length=length, init=init, combine=combine)
