"""Speed and memory levers, each against the plain path: fused attention, remat policies, bfloat16 frozen weights."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_model import _batch as model_batch

from prompt_tuning_jax import prompts
from prompt_tuning_jax.model import T5Config, Transformer, config_for_size
from prompt_tuning_jax.training import losses, optimizers, step_analysis, steps, train_state

TINY = config_for_size("tiny")
PROMPT_REGEX = ".*/prompt/.*"


def _batch(seed=0, batch=3, source=10, target=6, vocab=TINY.vocab_size):
  """test_model's padded inputs and targets (rows 0 and 1 padded, so masks matter) as a train-step batch."""
  enc, dec, tgt = model_batch(seed, batch, source, target, vocab)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec, "decoder_target_tokens": tgt,
          "decoder_loss_weights": jnp.asarray(tgt > 0, jnp.float32)}


def _model(config=TINY):
  return Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=4))


def _params(model, batch):
  init = jax.jit(functools.partial(model.init, enable_dropout=False))
  return nn.meta.unbox(init(jax.random.PRNGKey(0), batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                            batch["decoder_target_tokens"])["params"])


def _loss_and_prompt_grad(model, params, batch, dropout_rng=None):
  trainable, frozen = train_state.split_params(params, PROMPT_REGEX)

  def objective(trainable):
    merged = train_state.merge_params(trainable, frozen)
    return steps.loss_and_metrics(model, merged, batch, losses.LossConfig(), dropout_rng)[0]

  return jax.jit(jax.value_and_grad(objective))(trainable)


def _close(a, b, rtol=1e-4, atol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_fused_attention_gives_the_einsum_logits_and_prompt_gradient():
  batch = _batch()
  plain, fused = _model(), _model(TINY.replace(attention_impl="fused"))
  params = _params(plain, batch)
  args = (batch["encoder_input_tokens"], batch["decoder_input_tokens"], batch["decoder_target_tokens"])
  logits = jax.jit(functools.partial(plain.apply, enable_dropout=False))({"params": params}, *args)
  fused_logits = jax.jit(functools.partial(fused.apply, enable_dropout=False))({"params": params}, *args)
  np.testing.assert_allclose(fused_logits, logits, rtol=1e-5, atol=1e-5)
  _close(_loss_and_prompt_grad(fused, params, batch), _loss_and_prompt_grad(plain, params, batch))


def test_fused_attention_leaves_attention_dropout_to_the_einsum_path():
  batch = _batch()
  config = TINY.replace(dropout_rate=0.3)
  plain, fused = _model(config), _model(config.replace(attention_impl="fused"))
  params = _params(plain, batch)
  rng = jax.random.PRNGKey(7)
  _close(_loss_and_prompt_grad(fused, params, batch, rng), _loss_and_prompt_grad(plain, params, batch, rng))


@pytest.mark.parametrize("policy", ["full", "save_dots", "save_dots_no_batch"])
def test_remat_policies_give_the_plain_loss_and_prompt_gradient(policy):
  batch = _batch()
  plain, remat = _model(), _model(TINY.replace(remat_policy=policy))
  params = _params(plain, batch)
  _close(_loss_and_prompt_grad(remat, params, batch), _loss_and_prompt_grad(plain, params, batch))


def test_config_rejects_unknown_remat_policy_and_attention():
  with pytest.raises(ValueError, match="remat_policy must be one of"):
    T5Config(remat_policy="dots")
  with pytest.raises(ValueError, match="attention_impl must be one of"):
    T5Config(attention_impl="flash")


def _step_memory(config, frozen_dtype=jnp.float32):
  shapes = step_analysis.abstract_step_inputs(_model(config), optimizers.adafactor(), PROMPT_REGEX, 4, 60, 12,
                                              frozen_dtype)
  step = step_analysis.compile_train_step(_model(config), optimizers.adafactor(), PROMPT_REGEX, shapes)
  return step_analysis.memory(step)


_REMAT_MEMORY = """
import functools, json, sys
from prompt_tuning_jax import prompts
from prompt_tuning_jax.model import T5Config, Transformer
from prompt_tuning_jax.training import optimizers, step_analysis
out = {}
for policy in ("none", "full", "save_dots_no_batch"):
  config = T5Config(vocab_size=512, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=256, num_encoder_layers=8,
                    num_decoder_layers=8, remat_policy=policy)
  model = Transformer(config, prompt_factory=functools.partial(prompts.PrefixPrompt, length=4))
  out[policy] = step_analysis.summary(model, optimizers.adafactor(), ".*/prompt/.*", 4, 60, 12, with_forward=False)
print(json.dumps({p: [s["step_memory"]["temp"], s["step_flops"]] for p, s in out.items()}))
"""


def test_remat_policies_trade_activation_memory_for_recomputation():
  # XLA CPU's default scheduler optimizes for concurrency and runs every recomputation early (all layers' activations
  # alive again); a memory-minimizing schedule, as GPU compilers use, is what remat is for.
  env = dict(os.environ, XLA_FLAGS="--xla_cpu_enable_concurrency_optimized_scheduler=false", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _REMAT_MEMORY], capture_output=True, text=True, env=env, check=True)
  measured = json.loads(out.stdout.strip().splitlines()[-1])
  (none_temp, none_flops), (full_temp, full_flops), (dots_temp, dots_flops) = (
      measured[p] for p in ("none", "full", "save_dots_no_batch"))
  assert full_temp < 0.4 * none_temp, measured  # measured: 4.4 MB vs 19.8 MB
  assert full_temp < dots_temp < none_temp, measured  # 9.8 MB
  assert none_flops < dots_flops < full_flops, measured  # the forward is recomputed, all of it under 'full'


def test_bfloat16_frozen_weights_keep_the_prompt_and_its_optimizer_state_float32():
  batch = _batch()
  model = _model()
  params = _params(model, batch)
  cast = train_state.cast_frozen(jax.tree.map(jnp.array, params), PROMPT_REGEX, "bfloat16")
  trainable, frozen = train_state.split_params(cast, PROMPT_REGEX)
  assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(trainable)} == {jnp.dtype(jnp.float32)}
  optimizer = optimizers.trainable_only(optimizers.adafactor(), PROMPT_REGEX)
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                                 opt_state=optimizer.init(trainable))
  step = jax.jit(steps.make_train_step(model, optimizer, losses.LossConfig(), dropout_seed=0))
  new_state, metrics = step(state, frozen, batch)
  assert {x.dtype for x in jax.tree.leaves(new_state.opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(new_state.trainable)} == {jnp.dtype(jnp.float32)}
  # The same as float32 weights rounded to bfloat16, and close to the float32 model.
  rounded = jax.tree.map(lambda x: x.astype(jnp.float32), frozen)
  _, reference = step(state, rounded, batch)
  np.testing.assert_allclose(metrics["loss"], reference["loss"], rtol=1e-5)
  _, full_precision = step(state, train_state.split_params(params, PROMPT_REGEX)[1], batch)
  np.testing.assert_allclose(metrics["loss"], full_precision["loss"], rtol=2e-2)


def test_bfloat16_frozen_weights_halve_the_step_argument_memory():
  config = T5Config(vocab_size=4096, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=384, num_encoder_layers=2,
                    num_decoder_layers=2)
  f32, bf16 = _step_memory(config)["argument"], _step_memory(config, jnp.bfloat16)["argument"]
  assert bf16 < 0.52 * f32, (bf16, f32)


def test_cast_frozen_works_inside_jit():
  params = {"encoder": {"prompt": {"prompt": {"prompt": jnp.ones((2, 3))}}}, "token_embedder": {"embedding": jnp.ones(4)}}
  cast = jax.jit(lambda p: train_state.cast_frozen(p, PROMPT_REGEX, "bfloat16"))(params)
  assert cast["token_embedder"]["embedding"].dtype == jnp.bfloat16
  assert cast["encoder"]["prompt"]["prompt"]["prompt"].dtype == jnp.float32
  assert not params["token_embedder"]["embedding"].is_deleted()


def test_cast_frozen_refuses_an_integer_dtype():
  for bad in ("int8", "bfloat17"):
    with pytest.raises(ValueError, match="FROZEN_PARAM_DTYPE .* is not a floating-point dtype"):
      train_state.cast_frozen({"a": np.zeros(2, np.float32)}, PROMPT_REGEX, bad)


@pytest.mark.slow
def test_train_cli_with_bfloat16_frozen_weights_trains_a_float32_prompt(tmp_path):
  """The prompt trains (moves as far as with float32 weights, in nearly the same direction) and stays float32;
  the frozen weights really were bfloat16 (the two runs' prompts differ after the first update)."""
  import gin
  from test_cli_train import _flags

  from prompt_tuning_jax import train

  prompts = {}
  for dtype in ("None", "'bfloat16'"):
    model_dir = tmp_path / f"run_{dtype.strip(chr(39))}"
    gin.clear_config()
    try:
      train.main(_flags(model_dir, FROZEN_PARAM_DTYPE=dtype, TRAIN_STEPS="3", EVAL_PERIOD="0", SAVE_PERIOD="1"))
    finally:
      gin.clear_config()
    prompts[dtype] = [np.load(model_dir / "numpy_checkpoints" / f"checkpoint_{step}" / "encoder.prompt.prompt.prompt")
                      for step in (1, 3)]
  (f32_first, f32_last), (bf16_first, bf16_last) = prompts["None"], prompts["'bfloat16'"]
  assert bf16_last.dtype == np.float32 and np.all(np.isfinite(bf16_last))
  f32_move, bf16_move = f32_last - f32_first, bf16_last - bf16_first
  assert np.abs(bf16_move).max() > 0.1  # Adafactor at lr 0.3 moves the prompt by tenths in two steps
  # Same direction and size as float32 training (measured: 2% apart), but not the float32 run itself.
  assert np.linalg.norm(bf16_move - f32_move) < 0.1 * np.linalg.norm(f32_move)
  assert np.abs(bf16_last - f32_last).max() > 1e-3


def test_train_cli_refuses_a_non_float_frozen_dtype_before_writing(tmp_path, capsys):
  import gin
  from test_cli_train import _flags

  from prompt_tuning_jax import train

  gin.clear_config()
  try:
    with pytest.raises(SystemExit) as exit_info:
      train.main(_flags(tmp_path / "run", FROZEN_PARAM_DTYPE="'int8'"))
  finally:
    gin.clear_config()
  assert exit_info.value.code == 1
  assert "FROZEN_PARAM_DTYPE 'int8' is not a floating-point dtype" in capsys.readouterr().err
  assert not (tmp_path / "run").exists()  # refused before MODEL_DIR is created


def test_integer_label_loss_equals_the_one_hot_formula_and_its_gradient():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.randn(2, 5, 50) * 3, jnp.float32)
  targets = jnp.asarray(rng.randint(0, 50, (2, 5)), jnp.int32)

  def integer(logits):
    return jnp.sum(losses.cross_entropy_with_integer_labels(logits, targets, 1e-4)[0])

  def one_hot(logits):
    return jnp.sum(losses.cross_entropy_with_logits(logits, jax.nn.one_hot(targets, 50), 1e-4)[0])

  _close(jax.value_and_grad(integer)(logits), jax.value_and_grad(one_hot)(logits), rtol=1e-6, atol=1e-6)


def test_logits_and_loss_keep_one_vocabulary_sized_buffer():
  """The logits' matmul and the loss, forward and backward (gradient w.r.t. the decoder output, as in prompt
  tuning): XLA keeps one [tokens, vocab] float32 buffer (the logits, overwritten by their gradient) and a
  transposed copy of the kernel; no one-hot, softmax or log-softmax copy of the logits."""
  rng = np.random.RandomState(0)
  tokens, embed, vocab = 64, 64, 8192
  hidden = jax.ShapeDtypeStruct((4, tokens // 4, embed), jnp.float32)
  kernel = jnp.asarray(rng.randn(embed, vocab), jnp.float32)
  targets = jnp.asarray(rng.randint(0, vocab, (4, tokens // 4)), jnp.int32)
  f = lambda h: losses.compute_weighted_cross_entropy(h @ kernel, targets, None, losses.LossConfig())[0]
  temp = jax.jit(jax.grad(f)).lower(hidden).compile().memory_analysis().temp_size_in_bytes
  assert temp <= tokens * vocab * 4 + embed * vocab * 4 + 4096, temp
