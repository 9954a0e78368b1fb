"""Evaluation whose last batch is partial: every metric equals an independent numpy computation over exactly the
split's examples (no padding row counted, none dropped), on one device and on a 4-way data mesh.

The task is registered here (and removed after each test by conftest): 11 validation examples, global batch 4, so
the third batch holds 3 real rows and 1 padding row. The reference runs the model one example at a time, decodes
greedily by re-running the whole prefix (no KV cache) and computes the loss, z-loss and accuracy in float64.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning_jax import prompts
from prompt_tuning_jax.data import preprocessors, vocab
from prompt_tuning_jax.model import Transformer, config_for_size
from prompt_tuning_jax.training import evaluation, losses, partitioning

TASK = "test_eval_partial_batch"
NUM_EXAMPLES, BATCH, LENGTHS = 11, 4, {"inputs": 16, "targets": 12}
Z_LOSS = 1e-4
WORDS = ["a b c", "d e", "f g h i", "j", "k l", "m n o", "p", "q r", "s t u v", "w x", "y z a"]


def prediction_stats(targets, predictions):
  """The test task's metric: how many predictions were scored and their total length (every example counts)."""
  return {"count": float(len(predictions)), "chars": float(sum(len(p) for p in predictions)),
          "exact": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions, strict=True)]))}


@pytest.fixture
def task():
  def source(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": WORDS, "targets": [" ".join(reversed(w.split()))
                                                                            for w in WORDS]})
  seqio.TaskRegistry.add(
      TASK, source=seqio.FunctionDataSource(source, splits=["validation"], num_input_examples={"validation": 11}),
      preprocessors=preprocessors.tokenize_and_append_eos(),
      output_features=vocab.output_features(vocab.synthetic_vocabulary()), metric_fns=[prediction_stats])
  return seqio.TaskRegistry.get(TASK)


@pytest.fixture(scope="module")
def model_and_params():
  model = Transformer(config_for_size("tiny").replace(vocab_size=136), prompt_factory=functools.partial(
      prompts.PrefixPrompt, length=3, init=prompts.uniform()))
  tokens = jnp.ones((1, 4), jnp.int32)
  params = jax.jit(functools.partial(model.init, enable_dropout=False))(jax.random.PRNGKey(3), tokens, tokens,
                                                                       tokens)["params"]
  return model, jax.tree.map(np.asarray, nn.meta.unbox(params))


@pytest.fixture(scope="module")
def reference(model_and_params):
  """Loss, z-loss, token accuracy and the task metric of decoded texts, one example at a time, in numpy."""
  model, params = model_and_params
  apply = jax.jit(functools.partial(model.apply, enable_dropout=False))
  vocabulary = vocab.synthetic_vocabulary()
  loss = z_loss = correct = weight = 0.0
  texts, targets = [], []
  for words in WORDS:
    inputs = np.zeros((1, LENGTHS["inputs"]), np.int32)
    ids = vocabulary.encode(words) + [1]
    inputs[0, :len(ids)] = ids
    target_text = " ".join(reversed(words.split()))
    target_ids = vocabulary.encode(target_text) + [1]
    target = np.zeros((1, LENGTHS["targets"]), np.int32)
    target[0, :len(target_ids)] = target_ids
    decoder_inputs = np.concatenate([np.zeros((1, 1), np.int32), target[:, :-1]], axis=1)
    logits = np.asarray(apply({"params": params}, inputs, decoder_inputs, target), np.float64)[0]  # [t, vocab]
    log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    real = target[0] > 0
    nll = log_z - logits[np.arange(len(target[0])), target[0]]
    loss += np.sum((nll + Z_LOSS * log_z ** 2)[real])
    z_loss += np.sum((Z_LOSS * log_z ** 2)[real])
    correct += np.sum((logits.argmax(-1) == target[0])[real])
    weight += real.sum()
    decoded = np.zeros((1, LENGTHS["targets"]), np.int32)  # greedy, re-running the full prefix each step
    for t in range(LENGTHS["targets"]):
      prefix = np.concatenate([np.zeros((1, 1), np.int32), decoded[:, :-1]], axis=1)
      step_logits = np.asarray(apply({"params": params}, inputs, prefix, np.ones_like(prefix)))[0, t]
      decoded[0, t] = step_logits.argmax()
      if decoded[0, t] == 1:
        break
    texts.append(vocabulary.decode([int(i) for i in decoded[0] if i != 0]))
    targets.append(target_text)
  return {"loss": loss / weight, "z_loss": z_loss / weight, "token_accuracy": correct / weight,
          "num_examples": float(len(WORDS)), **{f"{TASK}/{k}": v for k, v in prediction_stats(targets, texts).items()}}


@pytest.mark.parametrize("mesh_shape", [(1, 1), (4, 1)], ids=["one_device", "data_mesh_4"])
def test_eval_with_a_partial_last_batch_equals_numpy_over_exactly_the_split(task, model_and_params, reference,
                                                                           mesh_shape):
  model, params = model_and_params
  assert NUM_EXAMPLES % BATCH  # the last batch is partial
  mesh = partitioning.create_mesh(mesh_shape=mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
  rules = partitioning.standard_logical_axis_rules()
  evaluate = evaluation.make_evaluate(model=model, loss_config=losses.LossConfig(z_loss=Z_LOSS), mesh=mesh,
                                      global_batch_size=BATCH, mixture_or_task_name=TASK,
                                      task_feature_lengths=LENGTHS, split="validation")
  with partitioning.mesh_context(mesh, rules):
    metrics = evaluate({}, params)
  expected = reference
  assert expected[f"{TASK}/chars"] > 0
  assert set(metrics) == set(expected), sorted(metrics)
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, rtol=2e-5, err_msg=name)
