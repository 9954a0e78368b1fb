"""No wasted work: XLA's cost and memory analysis of the compiled prompt-tuning train step.

The step is the trainer's own (`steps.make_train_step`, Adafactor under `optimizers.trainable_only`, state donated),
compiled from abstract arrays. Dimensions are chosen so no activation shares a kernel's shape (tokens: 2 x 24
encoder, 2 x 7 decoder; kernels 128/384/4096 wide), which makes "a matmul outputs a kernel-shaped array" mean
"a weight gradient".

Measured on CPU (jax 0.10.2): prompt tuning's step costs 1.99x its forward pass, full fine-tuning's 3.51x (the
weight gradients, plus Adafactor's elementwise work on 2M parameters); the prompt-tuning step's temporaries are
0.24x the frozen parameters' bytes, full fine-tuning's 2.3x the parameters'.
"""

import functools

import pytest

from prompt_tuning_jax import prompts
from prompt_tuning_jax.model import T5Config, Transformer
from prompt_tuning_jax.training import optimizers, step_analysis

PROMPT_REGEX = ".*/prompt/.*"
CONFIG = T5Config(vocab_size=4096, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=384, num_encoder_layers=2,
                  num_decoder_layers=2)
BATCH, INPUTS, TARGETS, PROMPT_LENGTH = 2, 19, 7, 5


def _model(config=CONFIG):
  return Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=PROMPT_LENGTH))


def _compiled(regex, config=CONFIG):
  model = _model(config)
  shapes = step_analysis.abstract_step_inputs(model, optimizers.adafactor(), regex, BATCH, INPUTS, TARGETS)
  step = step_analysis.compile_train_step(model, optimizers.adafactor(), regex, shapes)
  return shapes, step, step_analysis.compile_forward(model, shapes)


@pytest.fixture(scope="module")
def prompt_tuning():
  return _compiled(PROMPT_REGEX)


@pytest.fixture(scope="module")
def full_finetuning():
  return _compiled(".*")


def test_prompt_tuning_step_costs_twice_the_forward_pass(prompt_tuning):
  _, step, forward = prompt_tuning
  ratio = step_analysis.flops(step) / step_analysis.flops(forward)
  assert 1.8 < ratio < 2.2, ratio


def test_full_finetuning_step_costs_about_three_forward_passes(full_finetuning):
  _, step, forward = full_finetuning
  ratio = step_analysis.flops(step) / step_analysis.flops(forward)
  assert ratio > 2.8, ratio


def test_no_matmul_produces_a_frozen_weight_gradient(prompt_tuning, full_finetuning):
  shapes, step, _ = prompt_tuning
  assert step_analysis.weight_gradient_dots(step, shapes.frozen) == {}
  # The same check finds the weight gradients of full fine-tuning: every kernel of the model gets one.
  ft_shapes, ft_step, _ = full_finetuning
  found = step_analysis.weight_gradient_dots(ft_step, ft_shapes.state.trainable)
  assert "decoder/logits_dense/kernel" in found
  assert "encoder/layers_0/mlp/wi_0/kernel" in found
  assert "decoder/layers_1/encoder_decoder_attention/out/kernel" in found


def test_step_memory_holds_no_weight_gradient_buffers(prompt_tuning, full_finetuning):
  shapes, step, _ = prompt_tuning
  memory = step_analysis.memory(step)
  frozen_bytes = step_analysis.tree_bytes(shapes.frozen)
  # Outputs are the new train state (prompt + optimizer slots) and scalar metrics, no parameter-sized array.
  assert memory["output"] < step_analysis.tree_bytes(shapes.state) + 4096
  # Temporaries (saved activations, logits) are a fraction of the frozen weights a gradient of them would need.
  assert memory["temp"] < 0.5 * frozen_bytes
  # The donated state is aliased into the output, not copied.
  assert memory["alias"] == step_analysis.tree_bytes(shapes.state)
  ft_shapes, ft_step, _ = full_finetuning
  assert step_analysis.memory(ft_step)["temp"] > step_analysis.tree_bytes(ft_shapes.state.trainable)
