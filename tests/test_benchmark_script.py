"""scripts/benchmark.py: its FLOP formula against XLA's count, its summary of repeats, its input checks."""

import functools
import importlib.util
import os
import subprocess
import sys
import time

import pytest

from prompt_tuning_jax import prompts
from prompt_tuning_jax.model import T5Config, Transformer
from prompt_tuning_jax.training import optimizers, step_analysis

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "benchmark.py")
_spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def test_forward_flop_formula_matches_xla_count():
  size = dict(emb_dim=128, mlp_dim=384, num_layers=2, num_heads=4, head_dim=32)
  config = T5Config(vocab_size=4096, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=384, num_encoder_layers=2,
                    num_decoder_layers=2)
  model = Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=5))
  shapes = step_analysis.abstract_step_inputs(model, optimizers.adafactor(), ".*/prompt/.*", 2, 19, 7)
  xla = step_analysis.flops(step_analysis.compile_forward(model, shapes))
  formula = benchmark.forward_flops(size, 2, 19 + 5, 7, vocab=4096)
  # XLA also counts elementwise work (softmax, norms, the loss); the matmuls are nearly all of it.
  assert formula <= xla < 1.05 * formula, (formula, xla)


def test_summary_takes_medians_over_repeats_and_ratios_to_ours():
  ceiling = dict(n=8, dtype="float32", tflops=1e-3)
  runs = [dict(impl="ours", step_s=s, compile_s=1.0, ceiling=ceiling, device="cpu") for s in (0.3, 0.1, 0.2)]
  runs += [dict(impl="peft-fp32c", step_s=s, compile_s=2.0) for s in (0.4, 0.6)]
  runs += [dict(impl="peft-fp32", error=["boom"])]
  rows = {r["impl"]: r for r in benchmark.summarize(runs, tokens=1000, flops=1e9)}
  assert rows["ours"]["step_s"] == 0.2 and (rows["ours"]["step_min_s"], rows["ours"]["step_max_s"]) == (0.1, 0.3)
  assert rows["peft-fp32c"]["step_s"] == pytest.approx(0.5)
  assert rows["peft-fp32c"]["peft_over_ours"] == pytest.approx(2.5)
  assert rows["ours"]["tokens_per_s"] == pytest.approx(5000)
  assert rows["ours"]["mfu"] == pytest.approx(1e9 / 0.2 / 1e12 / 1e-3)
  assert rows["peft-fp32"]["error"] == ["boom"]


@pytest.mark.parametrize("flag, message", [("--steps=0", "--steps must be positive"),
                                           ("--ours_variant=onednn", "is not NAME=XLA_FLAGS")])
def test_bad_flags_are_one_line_errors(flag, message):
  out = subprocess.run([sys.executable, SCRIPT, flag], capture_output=True, text=True)
  assert out.returncode == 2
  assert message in out.stderr and "Traceback" not in out.stderr


def test_final_needs_an_idle_start_and_no_other_cpu_during_the_run():
  assert benchmark.is_final(0.4, 0.1) == (True, [])
  final, reasons = benchmark.is_final(1.6, 0.1)
  assert not final and reasons == ["load average 1.60 > 1 before the run"]
  final, reasons = benchmark.is_final(0.2, 0.8)
  assert not final and reasons == ["other processes used 0.80 cores > 0.25 during it"]
  assert benchmark.is_final(0.2, None)[0] is False  # unmeasured is not idle


def test_other_cpu_subtracts_this_scripts_own_time():
  # 10 s of wall time, 14 core-seconds busy on the machine, 9 of them this script's and its children's.
  assert benchmark.other_cpu((100.0, 50.0, 3.0), (110.0, 64.0, 12.0)) == pytest.approx(0.5)
  assert benchmark.other_cpu((100.0, 50.0, 3.0), (110.0, 55.0, 12.0)) == 0.0  # tick rounding never goes negative
  assert benchmark.other_cpu(None, (110.0, 55.0, 12.0)) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_other_cpu_sees_a_process_that_is_not_this_scripts():
  """A busy process this script did not wait for counts as other work (it gets at least a good part of a core
  even on a loaded machine; the bound is loose on purpose)."""
  busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
  try:
    start = benchmark.cpu_counters()
    time.sleep(2.0)
    others = benchmark.other_cpu(start, benchmark.cpu_counters())
  finally:
    busy.kill()
    busy.wait()
  assert others is not None and others > 0.3, others
