"""What XLA says a compiled train step costs: FLOPs, memory, and whether any frozen weight gets a gradient.

Everything here compiles from abstract arrays (`jax.ShapeDtypeStruct`), so it allocates no parameters and answers
for any model size on any backend, T5 1.1 xxl on a laptop CPU included. The step compiled is the trainer's own:
`steps.make_train_step` with the optimizer wrapped in `optimizers.trainable_only`, donating the train state.

A prompt-tuning step should cost about 2x the forward pass: the backward pass computes activation gradients only
(one matmul per forward matmul), while full fine-tuning adds a weight gradient per matmul (about 3x).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from prompt_tuning_jax.training import losses, optimizers, steps, train_state

PyTree = Any
# A matmul in optimized HLO: a dot or convolution (inside fusions too), or a library call (cuBLAS, oneDNN).
_MATMUL = re.compile(r"\s(?:dot|convolution)\(|custom-call\(.*custom_call_target=\"[^\"]*(?:gemm|matmul)", re.I)
_FIRST_SHAPE = re.compile(r"=\s*\(?[a-z0-9]+\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The abstract inputs of one train step.

  Attributes:
    state: `TrainState` of ShapeDtypeStructs (trainable parameters float32, optimizer state).
    frozen: the frozen parameters, in `frozen_dtype`.
    batch: encoder_input_tokens [batch, inputs], decoder_input_tokens / decoder_target_tokens /
      decoder_loss_weights [batch, targets].
    params: the whole parameter tree as the forward pass sees it (trainable and frozen merged).
  """

  state: Any
  frozen: PyTree
  batch: dict[str, jax.ShapeDtypeStruct]
  params: PyTree


def abstract_step_inputs(model: nn.Module, optimizer: optax.GradientTransformation, trainable_regex: str,
                         batch_size: int, input_length: int, target_length: int,
                         frozen_dtype: Any = jnp.float32) -> Shapes:
  """Shapes and dtypes of (state, frozen, batch) for `model`'s train step, without allocating anything."""
  tokens = jax.ShapeDtypeStruct((batch_size, input_length), jnp.int32)
  targets = jax.ShapeDtypeStruct((batch_size, target_length), jnp.int32)
  init = functools.partial(model.init, enable_dropout=False)
  params = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0), tokens, targets, targets)["params"])
  trainable, frozen = train_state.split_params(params, trainable_regex)
  optimizer = optimizers.trainable_only(optimizer, trainable_regex)  # as the trainer builds the state
  frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, frozen_dtype), frozen)
  state = jax.eval_shape(
      lambda t: train_state.TrainState(step=jnp.zeros((), jnp.int32), trainable=t, opt_state=optimizer.init(t)),
      trainable)
  batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": targets, "decoder_target_tokens": targets,
           "decoder_loss_weights": jax.ShapeDtypeStruct((batch_size, target_length), jnp.float32)}
  return Shapes(state, frozen, batch, train_state.merge_params(trainable, frozen))


def compile_train_step(model: nn.Module, optimizer: optax.GradientTransformation, trainable_regex: str,
                       shapes: Shapes, loss_config: losses.LossConfig = losses.LossConfig()) -> jax.stages.Compiled:
  """The trainer's step (`make_train_step`, optimizer masked by `trainable_only`, state donated), compiled."""
  optimizer = optimizers.trainable_only(optimizer, trainable_regex)
  step = jax.jit(steps.make_train_step(model, optimizer, loss_config, dropout_seed=0), donate_argnums=(0,))
  return step.lower(shapes.state, shapes.frozen, shapes.batch).compile()


def compile_forward(model: nn.Module, shapes: Shapes,
                    loss_config: losses.LossConfig = losses.LossConfig()) -> jax.stages.Compiled:
  """The step's forward pass alone: model, loss and metrics (no gradient, no dropout), compiled."""
  forward = jax.jit(lambda params, batch: steps.loss_and_metrics(model, params, batch, loss_config, None))
  return forward.lower(shapes.params, shapes.batch).compile()


def flops(compiled: jax.stages.Compiled) -> float:
  """XLA's own FLOP count of a compiled computation (matmuls and elementwise work)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0]
  return float(analysis["flops"])


def memory(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Bytes of the compiled computation's buffers: arguments, outputs, temporaries, and donated (aliased) ones.

  `peak` = arguments + outputs + temporaries - aliased, what the device must hold while the step runs (the
  executable's code and the allocator's fragmentation come on top).
  """
  m = compiled.memory_analysis()
  out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes, "temp": m.temp_size_in_bytes,
         "alias": m.alias_size_in_bytes}
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def tree_bytes(tree: PyTree) -> int:
  """Bytes of all leaves of a tree of arrays or ShapeDtypeStructs."""
  return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def dot_output_shapes(compiled: jax.stages.Compiled) -> list[tuple[int, ...]]:
  """Output shapes of every matmul (dot or convolution) in the optimized HLO, fused ones included."""
  shapes = []
  for line in compiled.as_text().splitlines():
    if _MATMUL.search(line) and (shape := _FIRST_SHAPE.search(line)):
      shapes.append(tuple(int(d) for d in shape.group(1).split(",") if d))
  return shapes


def weight_gradient_dots(compiled: jax.stages.Compiled, params: PyTree) -> dict[str, tuple[int, ...]]:
  """Matrices of `params` (e.g. the frozen ones) that some matmul of `compiled` produces an array shaped like.

  A matmul whose output has the shape of a frozen kernel [in, out] (or its transpose) contracts activations
  over the batch and length: that is a weight gradient. Pick model dimensions that differ from the batch's
  token counts so activations never share a kernel's shape.

  Returns:
    {'/'-joined parameter path: its shape} for each such matrix; empty when none of them gets a gradient.
  """
  produced = set(dot_output_shapes(compiled))
  found = {}
  for path, leaf in traverse_util.flatten_dict(params, sep="/").items():
    shape = tuple(leaf.shape)
    if len(shape) == 2 and (shape in produced or shape[::-1] in produced):
      found[path] = shape
  return found


def summary(model: nn.Module, optimizer: optax.GradientTransformation, trainable_regex: str, batch_size: int,
            input_length: int, target_length: int, frozen_dtype: Any = jnp.float32,
            with_forward: bool = True) -> Mapping[str, Any]:
  """Compiles the step (and the forward) from abstract arrays; returns FLOPs, memory and parameter bytes."""
  shapes = abstract_step_inputs(model, optimizer, trainable_regex, batch_size, input_length, target_length,
                                frozen_dtype)
  step = compile_train_step(model, optimizer, trainable_regex, shapes)
  out = {"step_flops": flops(step), "step_memory": memory(step), "frozen_bytes": tree_bytes(shapes.frozen),
         "trainable_bytes": tree_bytes(shapes.state.trainable), "state_bytes": tree_bytes(shapes.state),
         "weight_gradient_dots": weight_gradient_dots(step, shapes.frozen)}
  if with_forward:
    out["forward_flops"] = flops(compile_forward(model, shapes))
    out["step_to_forward"] = out["step_flops"] / out["forward_flops"]
  return out
