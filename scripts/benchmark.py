r"""Prompt-tuning train-step throughput: this package's real train step beside PEFT, measured in one run.

  .venv/bin/python scripts/benchmark.py                       # CPU: cpu_small, float32, PEFT eager and compiled
  .venv/bin/python scripts/benchmark.py --decode_speed --targets=64   # decoding tokens/s, KV cache vs none
  python scripts/benchmark.py --size=base --batch=32 --dtype=bfloat16 --peft_modes=bf16,bf16c   # one GPU

Both sides do the same work: T5 1.1 with random weights, a [prompt_length, embed] prompt in front of the encoder
input, teacher-forced loss, the gradient w.r.t. the prompt only and an optimizer update of the prompt. Ours is
`training.steps.make_train_step` (the function the trainer jits) with Adafactor; PEFT's is
`get_peft_model(T5ForConditionalGeneration, PromptTuningConfig)` with AdamW. Each side runs in its own subprocess
(PEFT modes: eager, `torch.compile`), warms up, then times `--steps` steps. Printed: tokens/s (encoder tokens incl.
the prompt, plus target tokens), model TFLOP/s (2 x forward FLOPs: the backward pass computes activation
gradients only), peak device memory where the backend reports it, and ours / each PEFT mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SIZES = {  # T5 1.1 shapes; cpu_small fits a 2-core CPU
    "cpu_small": dict(emb_dim=256, mlp_dim=1024, num_layers=4, num_heads=4, head_dim=64),
    "small": dict(emb_dim=512, mlp_dim=1024, num_layers=8, num_heads=6, head_dim=64),
    "base": dict(emb_dim=768, mlp_dim=2048, num_layers=12, num_heads=12, head_dim=64),
    "large": dict(emb_dim=1024, mlp_dim=2816, num_layers=24, num_heads=16, head_dim=64),
    "xl": dict(emb_dim=2048, mlp_dim=5120, num_layers=24, num_heads=32, head_dim=64),
    "xxl": dict(emb_dim=4096, mlp_dim=10240, num_layers=24, num_heads=64, head_dim=64),
}
VOCAB = 32128


def forward_flops(size: dict, batch: int, source: int, target: int, vocab: int = VOCAB) -> float:
  """Matmul FLOPs of one forward pass (source includes the prompt)."""
  d, f, layers, inner = size["emb_dim"], size["mlp_dim"], size["num_layers"], size["num_heads"] * size["head_dim"]
  projections = 4 * d * inner  # q, k, v, out
  mlp = 3 * d * f  # wi_0, wi_1, wo
  encoder = batch * source * layers * 2 * (projections + mlp) + batch * layers * 2 * 2 * source * source * inner
  decoder = (batch * target * layers * 2 * (projections + 2 * d * inner + mlp)  # self qkvo, cross q and out, mlp
             + batch * source * layers * 2 * 2 * d * inner  # cross-attention keys and values
             + batch * layers * 2 * 2 * (target * target + target * source) * inner)
  return encoder + decoder + 2 * batch * target * d * vocab


def run_ours(args) -> dict:
  import functools
  import time

  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from prompt_tuning_jax import prompts
  from prompt_tuning_jax.model import T5Config, Transformer
  from prompt_tuning_jax.training import losses, optimizers, steps, train_state

  s = SIZES[args.size]
  config = T5Config(vocab_size=VOCAB, emb_dim=s["emb_dim"], num_heads=s["num_heads"], head_dim=s["head_dim"],
                    mlp_dim=s["mlp_dim"], num_encoder_layers=s["num_layers"], num_decoder_layers=s["num_layers"],
                    dtype=args.dtype, remat_policy="full" if args.remat else "none")
  model = Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=args.prompt_length))
  rng = np.random.RandomState(0)
  batch = {
      "encoder_input_tokens": jnp.asarray(rng.randint(2, 32000, (args.batch, args.inputs)), jnp.int32),
      "decoder_target_tokens": jnp.asarray(rng.randint(2, 32000, (args.batch, args.targets)), jnp.int32),
  }
  batch["decoder_input_tokens"] = jnp.pad(batch["decoder_target_tokens"][:, :-1], ((0, 0), (1, 0)))
  batch["decoder_loss_weights"] = jnp.ones_like(batch["decoder_target_tokens"])
  init = jax.jit(functools.partial(model.init, enable_dropout=False))
  params = nn.meta.unbox(init(jax.random.PRNGKey(0), batch["encoder_input_tokens"][:1],
                              batch["decoder_input_tokens"][:1], batch["decoder_target_tokens"][:1])["params"])
  if args.dtype == "bfloat16":  # frozen weights stored in bf16, as PEFT's bf16 mode holds them
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  trainable, frozen = train_state.split_params(params, ".*/prompt/.*")
  trainable = jax.tree.map(lambda x: x.astype(jnp.float32), trainable)
  optimizer = optimizers.adafactor()
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                                 opt_state=optimizer.init(trainable))
  step = jax.jit(steps.make_train_step(model, optimizer, losses.LossConfig(), dropout_seed=0), donate_argnums=(0,))
  for _ in range(args.warmup):
    state, metrics = step(state, frozen, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, frozen, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  peak = (stats or {}).get("peak_bytes_in_use")
  return dict(impl="ours", step_s=seconds, loss=float(metrics["loss"]) / float(metrics["weight_sum"]),
              peak_gib=None if peak is None else peak / 2**30, device=str(device.device_kind))


def run_peft(args, mode: str) -> dict:
  import time

  import torch
  from peft import PromptTuningConfig, get_peft_model
  from transformers import T5Config, T5ForConditionalGeneration

  torch.manual_seed(0)
  s = SIZES[args.size]
  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  if not cuda:
    torch.set_num_threads(os.cpu_count() or 1)
  config = T5Config(vocab_size=VOCAB, d_model=s["emb_dim"], d_ff=s["mlp_dim"], num_layers=s["num_layers"],
                    num_decoder_layers=s["num_layers"], num_heads=s["num_heads"], d_kv=s["head_dim"],
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = T5ForConditionalGeneration(config)
  if mode.startswith("bf16"):
    model = model.to(torch.bfloat16)
  model = get_peft_model(model, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=args.prompt_length,
                                                   num_transformer_submodules=1)).to(device)
  if args.remat:
    model.base_model.gradient_checkpointing_enable()
  optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.3)
  forward = torch.compile(model) if mode.endswith("c") else model
  ids = torch.randint(2, 32000, (args.batch, args.inputs), device=device)
  labels = torch.randint(2, 32000, (args.batch, args.targets), device=device)
  mask = torch.ones_like(ids)

  def step():
    loss = forward(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  for _ in range(args.warmup):
    step()
  sync()
  start = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  sync()
  seconds = (time.perf_counter() - start) / args.steps
  peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
  return dict(impl=f"peft-{mode}", step_s=seconds, loss=float(loss.detach()), peak_gib=peak)


def _inference_config(args):
  """The T5Config of `--size` and `--dtype` (vocabulary 32128) for the inference benchmarks."""
  from prompt_tuning_jax.model import T5Config

  s = SIZES[args.size]
  return T5Config(vocab_size=VOCAB, emb_dim=s["emb_dim"], num_heads=s["num_heads"], head_dim=s["head_dim"],
                  mlp_dim=s["mlp_dim"], num_encoder_layers=s["num_layers"], num_decoder_layers=s["num_layers"],
                  dtype=args.dtype)


def _time_calls(calls: dict, args) -> dict:
  """{name: seconds per call} of each zero-argument jax call, after `--warmup` calls, over `--steps` calls."""
  import time

  import jax

  timings = {}
  for name, fn in calls.items():
    for _ in range(args.warmup):
      jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(args.steps):
      jax.block_until_ready(fn())
    timings[name] = (time.perf_counter() - start) / args.steps
  return timings


def run_mixed_prompts(args) -> dict:
  """Serving N tasks' prompts from one frozen model: a batch of mixed requests in one pass through the prompt bank
  vs the same requests one task at a time (N passes of batch / N rows, each with its task's prompt in the model).

  Both greedy-decode `--targets` tokens with the KV cache after one encoder pass; shapes are fixed, everything is
  compiled before timing. Returns examples/s of each and their ratio.
  """
  import functools

  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from prompt_tuning_jax import prompts
  from prompt_tuning_jax.inference import decoding
  from prompt_tuning_jax.inference.bank import PromptBank
  from prompt_tuning_jax.model import Transformer

  n, batch = args.mixed_prompts, args.batch
  if batch % n:
    raise SystemExit(f"--batch {batch} must be a multiple of --mixed_prompts {n} (equal requests per task)")
  config = _inference_config(args)
  bare = Transformer(config)
  single = Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=args.prompt_length))
  rng = np.random.RandomState(0)
  tokens = jnp.asarray(rng.randint(2, 32000, (batch, args.inputs)), jnp.int32)
  params = nn.meta.unbox(jax.jit(functools.partial(bare.init, enable_dropout=False))(
      jax.random.PRNGKey(0), tokens[:1], tokens[:1, :args.targets], tokens[:1, :args.targets])["params"])
  bank = PromptBank.from_prompts([(f"task{i}", rng.uniform(-0.5, 0.5, (args.prompt_length, config.emb_dim)))
                                  for i in range(n)])
  task_of_row = np.arange(batch) % n  # requests arrive interleaved

  def mixed():
    encoded, mask = bank.encode(bare, params, task_of_row, tokens)
    return decoding.decode(bare, params, max_decode_length=args.targets, encoded=encoded, encoder_mask=mask)[0]

  with_prompt = [{**params, "encoder": {**params["encoder"],
                                       "prompt": {"prompt": {"prompt": bank.prompt(f"task{i}")}}}} for i in range(n)]
  rows_of = [np.flatnonzero(task_of_row == i) for i in range(n)]

  def one_task_at_a_time():
    return [decoding.decode(single, with_prompt[i], tokens[rows_of[i]], max_decode_length=args.targets)[0]
            for i in range(n)]

  timings = _time_calls({"mixed batch (bank)": mixed, "one task at a time": one_task_at_a_time}, args)
  mixed_tokens = np.asarray(mixed())
  alone_tokens = one_task_at_a_time()
  same = all(np.array_equal(mixed_tokens[rows_of[i]], np.asarray(alone_tokens[i])) for i in range(n))
  return dict(prompts=n, batch=batch, device=str(jax.devices()[0].device_kind), same_tokens=same,
              **{f"{name} examples/s": batch / seconds for name, seconds in timings.items()},
              speedup=timings["one task at a time"] / timings["mixed batch (bank)"])


def run_decode_speed(args) -> dict:
  """Greedy decoding tokens/s with the KV cache (`decoding.decode`: one position per step, cross-attention keys
  and values projected once) vs without it (`decoding.greedy_decode_uncached`: the whole teacher-forced decoder
  re-run over the growing prefix every step), on the same prompted model and batch; EOS is disabled so both
  generate all `--targets` tokens. The encoder pass is timed in both. Returns seconds per batch and tokens/s.
  """
  import functools

  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from prompt_tuning_jax import prompts
  from prompt_tuning_jax.inference import decoding
  from prompt_tuning_jax.model import Transformer

  config = _inference_config(args)
  model = Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=args.prompt_length))
  tokens = jnp.asarray(np.random.RandomState(0).randint(2, 32000, (args.batch, args.inputs)), jnp.int32)
  params = nn.meta.unbox(jax.jit(functools.partial(model.init, enable_dropout=False))(
      jax.random.PRNGKey(0), tokens[:1], tokens[:1, :args.targets], tokens[:1, :args.targets])["params"])
  no_eos = -1  # never generated: every row runs the full length

  def cached():
    return decoding.decode(model, params, tokens, max_decode_length=args.targets, eos_id=no_eos)[0]

  def uncached():
    encoded, mask = decoding.encode(model, params, tokens)
    return decoding.greedy_decode_uncached(model, params, encoded, mask, max_decode_length=args.targets,
                                           eos_id=no_eos)[0]

  timings = _time_calls({"KV cache": cached, "no cache (re-run decoder)": uncached}, args)
  same = bool(np.array_equal(np.asarray(cached()), np.asarray(uncached())))
  generated = args.batch * args.targets
  return dict(device=str(jax.devices()[0].device_kind), same_tokens=same,
              rows=[dict(impl=name, batch_s=seconds, tokens_per_s=generated / seconds)
                    for name, seconds in timings.items()],
              speedup=timings["no cache (re-run decoder)"] / timings["KV cache"])


def _subprocess(args, side: str) -> dict:
  command = [sys.executable, os.path.abspath(__file__), f"--_side={side}",
             *[a for a in sys.argv[1:] if not a.startswith("--_side")]]
  out = subprocess.run(command, capture_output=True, text=True)
  lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
  if out.returncode != 0 or not lines:
    return dict(impl=side, error=(out.stderr or out.stdout).strip().splitlines()[-1:])
  return json.loads(lines[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="cpu_small", choices=sorted(SIZES))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=108, help="input tokens per example (the prompt comes on top)")
  parser.add_argument("--targets", type=int, default=32)
  parser.add_argument("--prompt_length", type=int, default=20)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--peft_modes", default="fp32,fp32c",
                      help="comma-separated: fp32, bf16 (weights in bf16), and a trailing c for torch.compile")
  parser.add_argument("--remat", action="store_true", help="per-layer rematerialization on both sides")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--json_out", default=None, help="also write the results here")
  parser.add_argument("--mixed_prompts", type=int, default=0,
                      help="instead: serving N prompts, one mixed batch vs one task at a time (e.g. 8)")
  parser.add_argument("--decode_speed", action="store_true",
                      help="instead: greedy decoding tokens/s with and without the KV cache (--targets steps)")
  parser.add_argument("--_side", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.batch <= 0 or args.steps <= 0:
    parser.error("--batch and --steps must be positive")
  if args.decode_speed:
    result = run_decode_speed(args)
    print(f"size {args.size}, batch {args.batch}, {args.inputs} input + {args.prompt_length} prompt tokens, greedy "
          f"{args.targets} tokens, {args.dtype}; device {result['device']}")
    print(f"{'decoding':28s} {'ms/batch':>9s} {'tokens/s':>10s}")
    for row in result["rows"]:
      print(f"{row['impl']:28s} {1e3 * row['batch_s']:9.1f} {row['tokens_per_s']:10.1f}")
    print(f"KV cache / no cache: {result['speedup']:.2f}x; same tokens: {result['same_tokens']}")
    if args.json_out:
      with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    return
  if args.mixed_prompts:
    result = run_mixed_prompts(args)
    print(f"size {args.size}, {args.mixed_prompts} prompts of {args.prompt_length} tokens, batch {args.batch} "
          f"({args.batch // args.mixed_prompts} per task), {args.inputs} input tokens, greedy {args.targets} "
          f"tokens, {args.dtype}; device {result['device']}")
    for key in ("mixed batch (bank) examples/s", "one task at a time examples/s"):
      print(f"{key:32s} {result[key]:10.1f}")
    print(f"mixed batch / one task at a time: {result['speedup']:.2f}x; same tokens: {result['same_tokens']}")
    if args.json_out:
      with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    return
  if args._side == "ours":
    print(json.dumps(run_ours(args)))
    return
  if args._side:
    print(json.dumps(run_peft(args, args._side.removeprefix("peft-"))))
    return

  tokens = args.batch * (args.inputs + args.prompt_length + args.targets)
  flops = 2 * forward_flops(SIZES[args.size], args.batch, args.inputs + args.prompt_length, args.targets)
  results = [_subprocess(args, "ours")] + [_subprocess(args, f"peft-{m}") for m in args.peft_modes.split(",") if m]
  ours = results[0]
  print(f"size {args.size}, batch {args.batch}, {args.inputs} input + {args.prompt_length} prompt tokens, "
        f"{args.targets} targets, {args.dtype}{', remat' if args.remat else ''}; device {ours.get('device', '?')}")
  print(f"{'impl':14s} {'step ms':>9s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'peak GiB':>9s} {'ours faster':>12s}")
  for r in results:
    if "error" in r:
      print(f"{r['impl']:14s} failed: {r['error']}")
      continue
    r["tokens_per_s"] = tokens / r["step_s"]
    r["tflops"] = flops / r["step_s"] / 1e12
    ratio = (r["step_s"] / ours["step_s"]) if "step_s" in ours else float("nan")
    r["ours_speedup"] = ratio
    peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
    print(f"{r['impl']:14s} {1e3 * r['step_s']:9.1f} {r['tokens_per_s']:10.0f} {r['tflops']:8.3f} {peak:>9s} "
          f"{ratio:11.2f}x")
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(dict(args={k: v for k, v in vars(args).items() if not k.startswith("_")}, results=results), f,
                indent=1)


if __name__ == "__main__":
  main()
