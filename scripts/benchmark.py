r"""Prompt-tuning train-step throughput: this package's real train step beside PEFT, measured in one run.

  .venv/bin/python scripts/benchmark.py                       # CPU: cpu_small, float32, PEFT eager and compiled
  .venv/bin/python scripts/benchmark.py --decode_speed --targets=64   # decoding tokens/s, KV cache vs none
  python scripts/benchmark.py --size=base --batch=32 --inputs=412 --prompt_length=100 --targets=128 \
      --dtype=bfloat16 --peft_modes=bf16,bf16c                 # one GPU (xl: --batch=16; xxl: --remat_policy=full)

Both sides do the same work: T5 1.1 with random weights, a [prompt_length, embed] prompt in front of the encoder
input, teacher-forced loss, the gradient w.r.t. the prompt only and an optimizer update of the prompt. Ours is
`training.steps.make_train_step` (the function the trainer jits) with Adafactor; PEFT's is
`get_peft_model(T5ForConditionalGeneration, PromptTuningConfig)` with AdamW. Each side runs in its own subprocess
(PEFT modes: eager, `torch.compile`), warms up, then times `--steps` steps one by one; the sides alternate
(ours, PEFT modes, ours, ...) `--repeats` times, and each implementation's median step time over its repeats is
reported with the spread (min-max of the repeats' medians).

Printed per implementation: median step time, tokens/s (encoder tokens incl. the prompt, plus target tokens,
padding-free), model TFLOP/s = 2 x forward FLOPs / step time (`forward_flops`: the matmuls of the forward pass,
the same count as shared/bench/peft_gpu_shapes.fwd_flops; x2 because the backward pass computes activation
gradients only, no weight gradients), MFU = model TFLOP/s / a matmul ceiling measured in the same run (an
8192^3 bf16 matmul on GPU; on CPU a 2048^3 matmul in the run's dtype), peak device memory where the backend
reports it (and for ours XLA's own estimate of the step's peak), compile time, and PEFT's step time / ours.
Whether other work competed: the load average before the first measurement (above 1: the machine was not idle),
and the CPU the rest of the machine used while the measurements ran (/proc/stat's busy time minus this script's
and its subprocesses', in cores on average; above 0.25 cores: something else ran). The load average after the run
counts the benchmark's own processes, so it is printed but not used. Either excess marks the ratios NOT final,
since contention slows the two sides differently.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

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
  """Matmul FLOPs of one forward pass (source includes the prompt); shared/bench/peft_gpu_shapes.fwd_flops's count.

  Per layer and token: 2 x (q, k, v, out projections + the three MLP matmuls); decoder layers add the
  cross-attention query and output projections; cross-attention keys and values are per source token; attention
  scores and the weighted sum are 2 x 2 x q x k x heads x kv; the logits 2 x target x embed x vocab.
  """
  d, f, layers, inner = size["emb_dim"], size["mlp_dim"], size["num_layers"], size["num_heads"] * size["head_dim"]
  projections = 4 * d * inner  # q, k, v, out
  mlp = 3 * d * f  # wi_0, wi_1, wo
  encoder = batch * source * layers * 2 * (projections + mlp) + batch * layers * 2 * 2 * source * source * inner
  decoder = (batch * target * layers * 2 * (projections + 2 * d * inner + mlp)  # self qkvo, cross q and out, mlp
             + batch * source * layers * 2 * 2 * d * inner  # cross-attention keys and values
             + batch * layers * 2 * 2 * (target * target + target * source) * inner)
  return encoder + decoder + 2 * batch * target * d * vocab


def _median_and_spread(values: list[float]) -> tuple[float, float, float]:
  ordered = sorted(values)
  mid = len(ordered) // 2
  median = ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
  return median, ordered[0], ordered[-1]


def load_average() -> float:
  """The 1-minute load average (processes running or waiting for a core)."""
  return os.getloadavg()[0]


OTHER_CPU_LIMIT = 0.25  # cores the rest of the machine may use on average while the measurements run


def _write_json(path: str | None, result: dict) -> None:
  """--json_out: the run's result as JSON (nothing when no path was given)."""
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=1)


def is_final(load_before: float, others: float | None) -> tuple[bool, list[str]]:
  """Whether the machine was idle for the run: (final, the reasons it was not)."""
  reasons = []
  if load_before > 1.0:
    reasons.append(f"load average {load_before:.2f} > 1 before the run")
  if others is None:
    reasons.append("other processes' CPU could not be measured")
  elif others > OTHER_CPU_LIMIT:
    reasons.append(f"other processes used {others:.2f} cores > {OTHER_CPU_LIMIT} during it")
  return not reasons, reasons


def cpu_counters() -> tuple[float, float, float] | None:
  """(wall s, machine busy core-seconds, this process's and its waited-for children's CPU s); None off Linux."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user/nice
  own = os.times()
  return time.monotonic(), busy, own.user + own.system + own.children_user + own.children_system


def other_cpu(start: tuple[float, float, float] | None, end: tuple[float, float, float] | None) -> float | None:
  """Cores used on average by everything but this script and its subprocesses between two `cpu_counters`."""
  if start is None or end is None or end[0] <= start[0]:
    return None
  return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def matmul_ceiling(dtype: str) -> dict:
  """TFLOP/s of a large square matmul in jax on the default device: the ceiling MFU is measured against."""
  import time

  import jax
  import jax.numpy as jnp

  on_cpu = jax.default_backend() == "cpu"
  n = 2048 if on_cpu else 8192
  dtype = dtype if on_cpu else "bfloat16"
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  times = []
  for _ in range(5):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return dict(n=n, dtype=dtype, tflops=2 * n**3 / min(times) / 1e12)


def run_ours(args) -> dict:
  import contextlib
  import functools
  import time

  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from prompt_tuning_jax import prompts
  from prompt_tuning_jax.model import T5Config, Transformer
  from prompt_tuning_jax.training import losses, optimizers, step_analysis, steps, train_state

  s = SIZES[args.size]
  config = T5Config(vocab_size=VOCAB, emb_dim=s["emb_dim"], num_heads=s["num_heads"], head_dim=s["head_dim"],
                    mlp_dim=s["mlp_dim"], num_encoder_layers=s["num_layers"], num_decoder_layers=s["num_layers"],
                    dtype=args.dtype, remat_policy=args.remat_policy, attention_impl=args.attention_impl)
  model = Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=args.prompt_length))
  rng = np.random.RandomState(0)
  batch = {
      "encoder_input_tokens": jnp.asarray(rng.randint(2, 32000, (args.batch, args.inputs)), jnp.int32),
      "decoder_target_tokens": jnp.asarray(rng.randint(2, 32000, (args.batch, args.targets)), jnp.int32),
  }
  batch["decoder_input_tokens"] = jnp.pad(batch["decoder_target_tokens"][:, :-1], ((0, 0), (1, 0)))
  batch["decoder_loss_weights"] = jnp.ones(batch["decoder_target_tokens"].shape, jnp.float32)
  regex = ".*/prompt/.*"
  frozen_dtype = args.frozen_dtype or args.dtype
  # Built straight in the frozen dtype (as FROZEN_PARAM_DTYPE stores it), the prompt in float32.
  init = jax.jit(lambda rng: train_state.cast_frozen(nn.meta.unbox(model.init(
      rng, batch["encoder_input_tokens"][:1], batch["decoder_input_tokens"][:1], batch["decoder_target_tokens"][:1],
      enable_dropout=False)["params"]), regex, frozen_dtype))
  trainable, frozen = train_state.split_params(init(jax.random.PRNGKey(0)), regex)
  optimizer = optimizers.trainable_only(optimizers.adafactor(), regex)  # as the trainer wraps it
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                                 opt_state=optimizer.init(trainable))
  step = jax.jit(steps.make_train_step(model, optimizer, losses.LossConfig(), dropout_seed=0), donate_argnums=(0,))
  start = time.perf_counter()
  compiled = step.lower(state, frozen, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(args.warmup):
    state, metrics = compiled(state, frozen, batch)
  jax.block_until_ready(metrics)
  times = []
  with jax.profiler.trace(args.profile_dir) if args.profile_dir else contextlib.nullcontext():
    for _ in range(args.steps):
      start = time.perf_counter()
      state, metrics = compiled(state, frozen, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  peak = (stats or {}).get("peak_bytes_in_use")
  return dict(impl=args._side or "ours", step_s=_median_and_spread(times)[0], compile_s=compile_s,
              loss=float(metrics["loss"]) / float(metrics["weight_sum"]),
              peak_gib=None if peak is None else peak / 2**30,
              xla_peak_gib=step_analysis.memory(compiled)["peak"] / 2**30, device=str(device.device_kind),
              ceiling=matmul_ceiling(args.dtype), versions=f"jax {jax.__version__}")


def run_peft(args, mode: str) -> dict:
  import time

  import peft
  import torch
  import transformers
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
  # Built on the device in its dtype (bf16: weights stored in bf16, as ours with FROZEN_PARAM_DTYPE).
  torch.set_default_dtype(torch.bfloat16 if mode.startswith("bf16") else torch.float32)
  with torch.device(device):
    model = T5ForConditionalGeneration(config)
  torch.set_default_dtype(torch.float32)
  if args.remat_policy != "none":  # PEFT's gradient checkpointing: per-layer recomputation, as ours
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
  model = get_peft_model(model, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=args.prompt_length,
                                                   num_transformer_submodules=1)).to(device)
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
  start = time.perf_counter()
  step()  # torch.compile compiles here
  sync()
  compile_s = time.perf_counter() - start
  for _ in range(max(args.warmup - 1, 0)):
    step()
  sync()
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    loss = step()
    sync()
    times.append(time.perf_counter() - start)
  peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
  return dict(impl=f"peft-{mode}", step_s=_median_and_spread(times)[0], compile_s=compile_s,
              loss=float(loss.detach()), peak_gib=peak,
              versions=f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")


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
  env = dict(os.environ)
  flags = dict(args.ours_variant).get(side.removeprefix("ours-")) if side.startswith("ours-") else None
  if flags:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
  out = subprocess.run(command, capture_output=True, text=True, env=env)
  lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
  if out.returncode != 0 or not lines:
    return dict(impl=side, error=(out.stderr or out.stdout).strip().splitlines()[-1:])
  return json.loads(lines[-1])


def summarize(runs: list[dict], tokens: int, flops: float) -> list[dict]:
  """One row per implementation from its repeats: median step time and spread, tokens/s, TFLOP/s, ratios."""
  by_impl: dict[str, list[dict]] = {}
  for r in runs:
    by_impl.setdefault(r["impl"], []).append(r)
  rows = []
  for impl, repeats in by_impl.items():
    good = [r for r in repeats if "error" not in r]
    if not good:
      rows.append(dict(impl=impl, error=repeats[-1]["error"]))
      continue
    median, low, high = _median_and_spread([r["step_s"] for r in good])
    row = dict(impl=impl, repeats=len(good), step_s=median, step_min_s=low, step_max_s=high,
               tokens_per_s=tokens / median, tflops=flops / median / 1e12,
               compile_s=_median_and_spread([r["compile_s"] for r in good])[0],
               peak_gib=good[-1].get("peak_gib"), xla_peak_gib=good[-1].get("xla_peak_gib"),
               versions=good[-1].get("versions"))
    if "ceiling" in good[-1]:
      row["ceiling"] = good[-1]["ceiling"]
      row["device"] = good[-1]["device"]
    rows.append(row)
  ours = next((r for r in rows if r["impl"] == "ours" and "error" not in r), None)
  for row in rows:
    if ours is not None and "error" not in row:
      row["peft_over_ours"] = row["step_s"] / ours["step_s"]
      row["mfu"] = row["tflops"] / ours["ceiling"]["tflops"]
  return rows


def _print_table(rows: list[dict]) -> None:
  print(f"{'impl':12s} {'step ms':>9s} {'spread ms':>15s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s} "
        f"{'peak GiB':>9s} {'compile s':>9s} {'x/ours':>9s}")
  for r in rows:
    if "error" in r:
      print(f"{r['impl']:12s} failed: {r['error']}")
      continue
    peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
    if r.get("xla_peak_gib") is not None and r.get("peak_gib") is None:
      peak = f"~{r['xla_peak_gib']:.2f}"  # XLA's estimate of the step's buffers; the backend reports no peak
    spread = f"{1e3 * r['step_min_s']:.1f}-{1e3 * r['step_max_s']:.1f}"
    print(f"{r['impl']:12s} {1e3 * r['step_s']:9.1f} {spread:>15s} {r['tokens_per_s']:10.0f} {r['tflops']:8.3f} "
          f"{100 * r['mfu']:5.1f}% {peak:>9s} {r['compile_s']:9.1f} {r['peft_over_ours']:8.2f}x")


def _variant(text: str) -> tuple[str, str]:
  name, sep, flags = text.partition("=")
  if not sep or not name or not flags.startswith("--"):
    raise argparse.ArgumentTypeError(f"{text!r} is not NAME=XLA_FLAGS, e.g. 'onednn=--xla_cpu_use_onednn=true'")
  return name, flags


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="cpu_small", choices=sorted(SIZES))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=108, help="input tokens per example (the prompt comes on top)")
  parser.add_argument("--targets", type=int, default=32)
  parser.add_argument("--prompt_length", type=int, default=20)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="activations")
  parser.add_argument("--frozen_dtype", default=None, choices=["float32", "bfloat16"],
                      help="storage dtype of our frozen weights (default: --dtype)")
  parser.add_argument("--peft_modes", default="fp32,fp32c",
                      help="comma-separated: fp32, bf16 (weights in bf16), and a trailing c for torch.compile")
  parser.add_argument("--remat_policy", default="none", choices=["none", "full", "save_dots", "save_dots_no_batch"],
                      help="our per-layer rematerialization; any but none also turns on PEFT's gradient checkpointing")
  parser.add_argument("--remat", action="store_true", help="the same as --remat_policy=full")
  parser.add_argument("--attention_impl", default="einsum", choices=["einsum", "fused"])
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each implementation")
  parser.add_argument("--json_out", default=None, help="also write the results here")
  parser.add_argument("--mixed_prompts", type=int, default=0,
                      help="instead: serving N prompts, one mixed batch vs one task at a time (e.g. 8)")
  parser.add_argument("--decode_speed", action="store_true",
                      help="instead: greedy decoding tokens/s with and without the KV cache (--targets steps)")
  parser.add_argument("--ours_variant", action="append", default=[], type=_variant, metavar="NAME=XLA_FLAGS",
                      help="also time our step with these extra XLA_FLAGS, as row ours-NAME (repeatable), e.g. "
                           "--ours_variant='onednn=--xla_cpu_use_onednn=true'")
  parser.add_argument("--profile_dir", default=None,
                      help="write a jax.profiler trace of our timed steps here (TensorBoard / Perfetto)")
  parser.add_argument("--_side", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.remat:
    args.remat_policy = "full"
  for name in ("batch", "steps", "repeats", "inputs", "targets", "prompt_length"):
    if getattr(args, name) <= 0:
      parser.error(f"--{name} must be positive")
  if args.decode_speed:
    result = run_decode_speed(args)
    print(f"size {args.size}, batch {args.batch}, {args.inputs} input + {args.prompt_length} prompt tokens, greedy "
          f"{args.targets} tokens, {args.dtype}; device {result['device']}")
    print(f"{'decoding':28s} {'ms/batch':>9s} {'tokens/s':>10s}")
    for row in result["rows"]:
      print(f"{row['impl']:28s} {1e3 * row['batch_s']:9.1f} {row['tokens_per_s']:10.1f}")
    print(f"KV cache / no cache: {result['speedup']:.2f}x; same tokens: {result['same_tokens']}")
    _write_json(args.json_out, result)
    return
  if args.mixed_prompts:
    result = run_mixed_prompts(args)
    print(f"size {args.size}, {args.mixed_prompts} prompts of {args.prompt_length} tokens, batch {args.batch} "
          f"({args.batch // args.mixed_prompts} per task), {args.inputs} input tokens, greedy {args.targets} "
          f"tokens, {args.dtype}; device {result['device']}")
    for key in ("mixed batch (bank) examples/s", "one task at a time examples/s"):
      print(f"{key:32s} {result[key]:10.1f}")
    print(f"mixed batch / one task at a time: {result['speedup']:.2f}x; same tokens: {result['same_tokens']}")
    _write_json(args.json_out, result)
    return
  if args._side and args._side.startswith("ours"):
    print(json.dumps(run_ours(args)))
    return
  if args._side:
    print(json.dumps(run_peft(args, args._side.removeprefix("peft-"))))
    return

  tokens = args.batch * (args.inputs + args.prompt_length + args.targets)
  flops = 2 * forward_flops(SIZES[args.size], args.batch, args.inputs + args.prompt_length, args.targets)
  sides = (["ours"] + [f"ours-{name}" for name, _ in args.ours_variant]
           + [f"peft-{m}" for m in args.peft_modes.split(",") if m])
  load_before = load_average()
  counters_before = cpu_counters()
  runs = []
  for repeat in range(args.repeats):
    for side in sides:
      runs.append(_subprocess(args, side))
      r = runs[-1]
      status = r["error"] if "error" in r else f"{1e3 * r['step_s']:.1f} ms/step"
      print(f"repeat {repeat + 1}/{args.repeats} {side}: {status} (load {load_average():.2f})", flush=True)
  load_after = load_average()
  others = other_cpu(counters_before, cpu_counters())
  rows = summarize(runs, tokens, flops)
  ours = next((r for r in rows if r["impl"] == "ours" and "error" not in r), {})
  print(f"\nsize {args.size}, batch {args.batch}, {args.inputs} input + {args.prompt_length} prompt tokens, "
        f"{args.targets} targets, activations {args.dtype}, our frozen weights {args.frozen_dtype or args.dtype}, "
        f"remat {args.remat_policy}, attention {args.attention_impl}; device {ours.get('device', '?')}; "
        f"{args.repeats} repeats x {args.steps} steps after {args.warmup} warm-up")
  if "ceiling" in ours:
    c = ours["ceiling"]
    print(f"matmul ceiling ({c['n']}^3 {c['dtype']}, this run): {c['tflops']:.3f} TFLOP/s; "
          f"model FLOPs per step (2 x forward): {flops / 1e12:.4f} TFLOP")
  for name, flags in args.ours_variant:
    print(f"ours-{name}: our step with XLA_FLAGS {flags}")
  for r in rows:
    if r.get("versions"):
      print(f"{r['impl']}: {r['versions']}")
  _print_table(rows)
  good = [r for r in rows if "error" not in r]
  for peft_row in (r for r in good if r["impl"].startswith("peft")):
    ratios = ", ".join(f"{r['impl']} {peft_row['step_s'] / r['step_s']:.2f}x" for r in good if r["impl"].startswith("ours"))
    print(f"faster than {peft_row['impl']} (its median step / ours): {ratios}")
  final, reasons = is_final(load_before, others)
  others_text = "unknown (no /proc/stat)" if others is None else f"{others:.2f} cores"
  print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f} (this run's own processes "
        f"included); other processes' CPU during the measurements: {others_text}; {os.cpu_count()} cores")
  if not final:
    print(f"!!! NOT FINAL: {'; '.join(reasons)}: other work competed for the cores, so these ratios do not count; "
          "rerun on an idle machine !!!")
  _write_json(args.json_out, dict(args={k: v for k, v in vars(args).items() if not k.startswith("_")},
                                  load_before=load_before, load_after=load_after, other_cpu_cores=others,
                                  final=final, runs=runs, rows=rows))


if __name__ == "__main__":
  main()
