"""The optimizer recipes of gin_configs/runs/*.gin, pinned against an independent numpy Adafactor.

Each test parses the run's real gin stack (as `python -m prompt_tuning_jax.train` does), builds the optimizer
`runs.train` receives, and compares a few updates with `numpy_adafactor_step`, a float64 transcription of T5X's
Adafactor (Shazeer & Stern 2018 as t5x/adafactor.py implements it: epsilon1 1e-30 added to g^2, decay
1 - (step + 1)^-decay_rate, factoring when the second-largest dimension is >= 128, update clipping by RMS, parameter
scale max(rms(param), 1e-3), decoupled weight decay `(1 - wd) * param`). When t5x is installed the numpy reference
is itself checked against t5x's `Adafactor.apply_param_gradient`.

The gradients are chosen so every setting shows: zero entries (only weight decay moves them), tiny entries
(1e-6, where a larger epsilon1 would change the step), a 10x larger last gradient (the update RMS exceeds 1 and is
clipped), three steps (the first step's decay is 0 whatever decay_rate is), a [128, 192] matrix (factored in the
fine-tuning recipes) and a matrix of RMS < 1e-3 (parameter scale clipped at epsilon2).
"""

from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _optional import needs

from prompt_tuning_jax.training import cli

EPSILON1, EPSILON2, MIN_DIM_SIZE_TO_FACTOR = 1e-30, 1e-3, 128
# The run files' %gin.REQUIRED macros; none of them reaches the optimizer.
REQUIRED_BINDINGS = ["MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_NAME = 'synthetic_reverse'",
                     "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}", "INITIAL_CHECKPOINT_PATH = None",
                     "TRAIN_STEPS = 10"]


def numpy_adafactor_step(param: np.ndarray, grad: np.ndarray, slots: dict, step: int, *, learning_rate: float,
                         decay_rate: float, weight_decay_rate: float | None, multiply_by_parameter_scale: bool,
                         factored: bool, clipping_threshold: float | None) -> tuple[np.ndarray, dict]:
  """One Adafactor step in float64; `slots` holds 'v' or ('v_row', 'v_col'), empty before the first step."""
  param, grad = param.astype(np.float64), grad.astype(np.float64)
  decay = 1.0 - (step + 1.0) ** -decay_rate
  grad_sqr = grad * grad + EPSILON1
  factor = factored and param.ndim == 2 and sorted(param.shape)[-2] >= MIN_DIM_SIZE_TO_FACTOR
  if factor:  # v ~ outer(row means, column means) / mean: the same whichever axis is called the row
    v_row = decay * slots.get("v_row", 0.0) + (1 - decay) * grad_sqr.mean(axis=1)
    v_col = decay * slots.get("v_col", 0.0) + (1 - decay) * grad_sqr.mean(axis=0)
    slots = {"v_row": v_row, "v_col": v_col}
    v_hat = np.outer(v_row, v_col) / v_row.mean()
  else:
    v_hat = decay * slots.get("v", 0.0) + (1 - decay) * grad_sqr
    slots = {"v": v_hat}
  update = grad / np.sqrt(v_hat)
  if clipping_threshold is not None:
    update /= max(1.0, np.sqrt(np.mean(update * update)) / clipping_threshold)
  scale = learning_rate
  if multiply_by_parameter_scale:
    scale *= max(np.sqrt(np.mean(param * param)), EPSILON2)
  decayed = param * (1.0 - weight_decay_rate) if weight_decay_rate is not None else param
  return decayed - scale * update, slots


def _params_and_grads(num_steps: int = 3) -> tuple[dict, list[dict]]:
  rng = np.random.RandomState(0)
  params = {"prompt": rng.normal(size=(6, 16)).astype(np.float32) * 5.0,
            "kernel": rng.normal(size=(128, 192)).astype(np.float32),
            "tiny_kernel": (rng.normal(size=(8, 4)) * 1e-4).astype(np.float32),
            "scale": (1.0 + rng.normal(size=(16,))).astype(np.float32)}
  grads = []
  for step in range(num_steps):
    grad = {name: rng.normal(size=p.shape).astype(np.float32) * (10.0 if step == num_steps - 1 else 1.0)
            for name, p in params.items()}
    grad["prompt"][0] = 0.0  # weight decay alone moves this row
    grad["prompt"][1] = 1e-6 * np.sign(grad["prompt"][1])  # a larger epsilon1 would shrink these updates
    grads.append(grad)
  return params, grads


def _gin_optimizer(run_file: str, *model_files: str) -> optax.GradientTransformation:
  """The optimizer the run's gin stack hands to `runs.train` (the CLI's own parser and search path)."""
  gin.clear_config()
  cli.parse_gin([*model_files, run_file], REQUIRED_BINDINGS, [])
  return gin.query_parameter("runs.train.optimizer").scoped_configurable_fn()


@pytest.fixture(autouse=True)
def _fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _check_against_numpy(tx: optax.GradientTransformation, recipe: dict, learning_rates: list[float],
                         state_override=None) -> None:
  params, grads = _params_and_grads(len(learning_rates))
  state = tx.init(jax.tree.map(jnp.asarray, params))
  first_step = 0
  if state_override is not None:
    state, first_step = state_override(state)
  current = dict(params)
  slots = {name: {} for name in params}
  update = jax.jit(tx.update)
  for i, (grad, lr) in enumerate(zip(grads, learning_rates, strict=True)):
    updates, state = update(jax.tree.map(jnp.asarray, grad), state, jax.tree.map(jnp.asarray, current))
    for name in params:  # the update, not the new value: float32 rounding of param + update would hide it
      expected, slots[name] = numpy_adafactor_step(current[name], grad[name], slots[name], first_step + i,
                                                   learning_rate=lr, **recipe)
      np.testing.assert_allclose(np.asarray(updates[name]), expected - current[name], rtol=5e-5, atol=1e-12,
                                 err_msg=f"update of {name} at step {first_step + i}")
    current = jax.tree.map(lambda p, u: np.asarray(p + u), current, updates)


PROMPT_RECIPE = {"decay_rate": 0.8, "weight_decay_rate": 1e-5, "multiply_by_parameter_scale": False,
                 "factored": False, "clipping_threshold": 1.0}
FINETUNE_RECIPE = {"decay_rate": 0.8, "weight_decay_rate": None, "multiply_by_parameter_scale": True,
                   "factored": True, "clipping_threshold": 1.0}
MODEL = ("models/t5_1_1_tiny.gin",)


def test_prompt_finetune_gin_is_the_papers_adafactor():
  tx = _gin_optimizer("runs/prompt_finetune.gin", *MODEL, "models/prompt.gin", "prompts/from_uniform.gin")
  _check_against_numpy(tx, PROMPT_RECIPE, [0.3] * 3)


def test_prompt_finetune_weight_decay_moves_zero_gradient_entries_by_exactly_1e_5():
  tx = _gin_optimizer("runs/prompt_finetune.gin", *MODEL, "models/prompt.gin", "prompts/from_uniform.gin")
  params = {"prompt": jnp.full((2, 3), 4.0)}
  updates, _ = tx.update({"prompt": jnp.zeros((2, 3))}, tx.init(params), params)
  np.testing.assert_allclose(updates["prompt"], -4e-5, rtol=1e-6)


def test_model_finetune_gin_is_t5x_finetuning_adafactor():
  _check_against_numpy(_gin_optimizer("runs/model_finetune.gin", *MODEL), FINETUNE_RECIPE, [1e-3] * 3)


def test_pretrain_gin_is_adafactor_with_rsqrt_learning_rate_during_warmup():
  tx = _gin_optimizer("runs/pretrain.gin", *MODEL)
  _check_against_numpy(tx, FINETUNE_RECIPE, [1.0 / np.sqrt(10_000)] * 3)


def test_pretrain_gin_learning_rate_decays_as_rsqrt_of_the_step_after_warmup():
  tx = _gin_optimizer("runs/pretrain.gin", *MODEL)
  start = 40_000

  def at_step(state):  # every step counter (schedule and second-moment decay) as if 40k steps had run
    return optax.tree_utils.tree_set(state, count=jnp.asarray(start, jnp.int32)), start

  _check_against_numpy(tx, FINETUNE_RECIPE, [1.0 / np.sqrt(step) for step in range(start, start + 3)], at_step)


@needs("t5x")
@pytest.mark.parametrize("recipe,learning_rate", [(PROMPT_RECIPE, 0.3), (FINETUNE_RECIPE, 1e-3)],
                         ids=["prompt_finetune", "model_finetune"])
def test_numpy_reference_matches_t5x_adafactor(recipe, learning_rate):
  from t5x import adafactor as t5x_adafactor
  opt = t5x_adafactor.Adafactor(learning_rate=learning_rate, **recipe)
  params, grads = _params_and_grads()
  for name, param in params.items():
    value, state, slots = jnp.asarray(param), opt.init_param_state(jnp.asarray(param), name), {}
    for step, grad in enumerate(grads):
      new_value, state = opt.apply_param_gradient(step, opt.hyper_params, value, state, jnp.asarray(grad[name]),
                                                  name)
      expected, slots = numpy_adafactor_step(np.asarray(value), grad[name], slots, step,
                                             learning_rate=learning_rate, **recipe)
      # t5x returns the new float32 value: allow its rounding (a few ulp of the value) on top of rtol.
      delta, rounding = expected - np.asarray(value), 4 * np.finfo(np.float32).eps * np.abs(expected)
      error = np.abs(np.asarray(new_value, np.float64) - expected)
      assert np.all(error <= 5e-5 * np.abs(delta) + rounding), f"update of {name} at step {step}: {error.max()}"
      value = new_value
