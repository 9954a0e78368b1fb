r"""Device memory of the prompt-tuning train step at any T5 1.1 size, from XLA's analysis of the compiled step.

  .venv/bin/python scripts/step_memory.py --size=xxl --batch=32 --inputs=412 --prompt_length=100 --targets=128 \
      --frozen_dtype=bfloat16 --remat_policy=full

Compiles the trainer's own step (`training.step_analysis`) from abstract arrays: nothing is allocated, so T5 1.1
xxl (11B parameters) is analyzed on a CPU. Prints arguments (frozen weights, state, batch), outputs, temporaries
(activations kept for the backward pass, logits, workspace), and their sum, the step's peak, against
`--device_gib`. The compiler is the local backend's: on a CPU host, XLA CPU with its memory-minimizing scheduler
(the concurrency-optimized one, CPU's default, runs rematerialized layers early and so keeps them all alive);
a GPU's scheduler also minimizes memory, and the allocator and cuDNN/cuBLAS workspaces come on top.
"""

from __future__ import annotations

import os

# Before jax is imported: XLA reads its flags once.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_enable_concurrency_optimized_scheduler=false"]).strip()

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402


def main() -> None:
  from prompt_tuning_jax.model import SIZES
  from prompt_tuning_jax.model.config import ATTENTION_IMPLS, REMAT_POLICIES

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="xxl", choices=sorted(SIZES))
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--inputs", type=int, default=412, help="input tokens per example (the prompt comes on top)")
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--targets", type=int, default=128)
  parser.add_argument("--vocab_size", type=int, default=32128)
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="activations")
  parser.add_argument("--frozen_dtype", default="bfloat16", choices=["float32", "bfloat16"])
  parser.add_argument("--remat_policy", default="full", choices=sorted(REMAT_POLICIES))
  parser.add_argument("--attention_impl", default="einsum", choices=ATTENTION_IMPLS)
  parser.add_argument("--device_gib", type=float, default=80.0, help="the device memory to compare with")
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args()
  for name in ("batch", "inputs", "prompt_length", "targets", "vocab_size"):
    if getattr(args, name) <= 0:
      parser.error(f"--{name} must be positive")

  import jax
  import jax.numpy as jnp

  from prompt_tuning_jax import prompts
  from prompt_tuning_jax.model import Transformer, config_for_size
  from prompt_tuning_jax.training import optimizers, step_analysis

  overrides = dict(vocab_size=args.vocab_size, dtype=args.dtype, remat_policy=args.remat_policy,
                   attention_impl=args.attention_impl)
  if args.size == "tiny":
    overrides.pop("vocab_size")
  config = config_for_size(args.size, **overrides)
  model = Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=args.prompt_length))
  regex = ".*/prompt/.*"
  optimizer = optimizers.adafactor()
  start = time.perf_counter()
  shapes = step_analysis.abstract_step_inputs(model, optimizer, regex, args.batch, args.inputs, args.targets,
                                              jnp.dtype(args.frozen_dtype))
  compiled = step_analysis.compile_train_step(model, optimizer, regex, shapes)
  seconds = time.perf_counter() - start
  memory = step_analysis.memory(compiled)
  gib = {name: value / 2**30 for name, value in memory.items()}
  result = {"args": vars(args), "backend": jax.default_backend(), "jax": jax.__version__,
            "compile_s": round(seconds, 1), "memory_bytes": memory,
            "frozen_gib": step_analysis.tree_bytes(shapes.frozen) / 2**30,
            "state_bytes": step_analysis.tree_bytes(shapes.state),
            "step_tflop": step_analysis.flops(compiled) / 1e12,
            "fits": memory["peak"] / 2**30 <= args.device_gib}
  print(f"T5 1.1 {args.size}: batch {args.batch}, {args.inputs} input + {args.prompt_length} prompt + "
        f"{args.targets} target tokens; activations {args.dtype}, frozen weights {args.frozen_dtype}, remat "
        f"{args.remat_policy}, attention {args.attention_impl}; XLA {jax.default_backend()}, jax {jax.__version__}")
  print(f"frozen weights {result['frozen_gib']:.2f} GiB, train state {result['state_bytes'] / 2**20:.2f} MiB, "
        f"step {result['step_tflop']:.1f} TFLOP (XLA's count), compiled in {seconds:.0f} s")
  print(f"arguments {gib['argument']:.2f} GiB + outputs {gib['output']:.3f} GiB + temporaries {gib['temp']:.2f} GiB "
        f"- donated {gib['alias']:.3f} GiB = peak {gib['peak']:.2f} GiB: "
        f"{'fits' if result['fits'] else 'does NOT fit'} in {args.device_gib:g} GiB")
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
