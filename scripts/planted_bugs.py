"""Planted-bug check: small mutations of core code, each of which the named tests must catch.

  .venv/bin/python scripts/planted_bugs.py              # all mutations, 2 at a time
  .venv/bin/python scripts/planted_bugs.py -j 4 -k mask  # those whose name contains 'mask'
  .venv/bin/python scripts/planted_bugs.py --list

Each mutation replaces one exact piece of source text (the anchor must occur exactly once, or the check fails
before running anything) in a temporary copy of the repository, then runs only the tests that must catch it, with
this venv's python and PYTHONPATH pointing at the copy. A mutation is *killed* when pytest reports failing tests
(exit status 1) and *survives* when they pass; a run whose tests were all skipped is *untested*. The unmutated copy runs every selected test first (one pytest run): a failing baseline would make kills
meaningless. Prints one line per mutation; exits 1 if any survived, was untested or could not run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("prompt_tuning_jax", "gin_configs", "tests", "scripts", "pyproject.toml")
TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str  # relative to the repository root
  anchor: str  # exact source text, found exactly once
  replacement: str
  tests: tuple[str, ...]  # pytest node ids or test files


T = "tests/"
MUTATIONS = (
    # The paper's recipe (gin) and the optimizer.
    Mutation("recipe: prompt Adafactor decay_rate 0.8 -> 0.9", "gin_configs/runs/prompt_finetune.gin",
             "  decay_rate = 0.8\n  weight_decay_rate = 1e-5", "  decay_rate = 0.9\n  weight_decay_rate = 1e-5",
             (T + "test_recipe.py::test_prompt_finetune_gin_is_the_papers_adafactor",)),
    Mutation("recipe: prompt weight decay 1e-5 -> 1e-4", "gin_configs/runs/prompt_finetune.gin",
             "weight_decay_rate = 1e-5", "weight_decay_rate = 1e-4",
             (T + "test_recipe.py::test_prompt_finetune_weight_decay_moves_zero_gradient_entries_by_exactly_1e_5",)),
    Mutation("recipe: prompt second moment factored", "gin_configs/runs/prompt_finetune.gin",
             "  factored = False", "  factored = True",
             (T + "test_recipe.py::test_prompt_finetune_gin_is_the_papers_adafactor",)),
    Mutation("recipe: fine-tuning without parameter scaling", "gin_configs/runs/model_finetune.gin",
             "multiply_by_parameter_scale = True", "multiply_by_parameter_scale = False",
             (T + "test_recipe.py::test_model_finetune_gin_is_t5x_finetuning_adafactor",)),
    Mutation("recipe: pretraining warmup 10k -> 1k", "gin_configs/runs/pretrain.gin",
             "WARMUP_STEPS = 10000", "WARMUP_STEPS = 1000",
             (T + "test_recipe.py::test_pretrain_gin_is_adafactor_with_rsqrt_learning_rate_during_warmup",)),
    Mutation("optimizer: update clipping dropped", "prompt_tuning_jax/training/optimizers.py",
             "clipping_threshold=clipping_threshold, min_dim_size_to_factor",
             "clipping_threshold=None, min_dim_size_to_factor",
             (T + "test_recipe.py::test_prompt_finetune_gin_is_the_papers_adafactor",)),
    Mutation("optimizer: frozen leaves updated too", "prompt_tuning_jax/training/optimizers.py",
             "{TRAINABLE: tx, FROZEN: optax.set_to_zero()}", "{TRAINABLE: tx, FROZEN: tx}",
             (T + "test_training_optimizers.py",)),
    # Masks and the prompt's place.
    Mutation("mask: encoder self-attention hides the prompt", "prompt_tuning_jax/model/t5.py",
             "valid = jnp.concatenate([prompt_valid(x.shape[1] - encoder_input_tokens.shape[1], valid.shape[0],",
             "valid = jnp.concatenate([~prompt_valid(x.shape[1] - encoder_input_tokens.shape[1], valid.shape[0],",
             (T + "test_model.py::test_a_fully_padded_example_still_attends_to_the_prompt",)),
    Mutation("mask: cross-attention hides the prompt", "prompt_tuning_jax/model/t5.py",
             "key_valid = jnp.concatenate([prompt_valid(prompt_length, batch, prompt_mask), encoder_input_tokens > 0],",
             "key_valid = jnp.concatenate([~prompt_valid(prompt_length, batch, prompt_mask), encoder_input_tokens > 0],",
             (T + "test_model.py::test_prompt_is_prepended_to_the_embedded_inputs_and_seen_by_every_position",)),
    Mutation("prompt: appended after the inputs", "prompt_tuning_jax/prompts/prompt.py",
             "jnp.concatenate([prompt, embedded_inputs], axis=1)",
             "jnp.concatenate([embedded_inputs, prompt], axis=1)",
             (T + "test_model.py::test_prompt_is_prepended_to_the_embedded_inputs_and_seen_by_every_position",)),
    Mutation("model: relative position buckets, max_exact halved", "prompt_tuning_jax/model/layers.py",
             "  max_exact = num_buckets // 2\n", "  max_exact = num_buckets // 4\n",
             (T + "test_model.py::test_relative_buckets_equal_huggingface",)),
    Mutation("model: bfloat16 setting ignored by the projections", "prompt_tuning_jax/model/layers.py",
             'return jnp.einsum("...i,io->...o", x, kernel.astype(self.dtype))',
             'return jnp.einsum("...i,io->...o", x.astype(jnp.float32), kernel.astype(jnp.float32))',
             (T + "test_model.py::test_bfloat16_activations_keep_float32_params_and_logits",)),
    # Parameters: merge/split, checkpoints.
    Mutation("train state: merge zeroes the trainable values", "prompt_tuning_jax/training/train_state.py",
             "  flat.update(traverse_util.flatten_dict(trainable))",
             "  flat.update({k: v * 0 for k, v in traverse_util.flatten_dict(trainable).items()})",
             (T + "test_training_train_state.py::test_merge_inverts_split",)),
    Mutation("train state: split_params regex only searched, not fully matched",
             "prompt_tuning_jax/training/train_state.py",
             'trainable = {path: v for path, v in flat.items() if pattern.fullmatch("/".join(path))}',
             'trainable = {path: v for path, v in flat.items() if pattern.search("/".join(path))}',
             (T + "test_training_train_state.py::test_regex_must_match_the_whole_path",)),
    Mutation("checkpoint: t5x legacy tensorstore specs flattened as subtrees", "prompt_tuning_jax/checkpoints/t5x.py",
             'sep="/", is_leaf=lambda _, v: _is_tensorstore_spec(v))', 'sep="/")',
             (T + "test_checkpoints_t5x_foreign.py::test_t5x_legacy_checkpoint_loads_every_array_exactly",)),
    Mutation("checkpoint: t5x orbax names joined with '.' instead of '/'", "prompt_tuning_jax/checkpoints/t5x.py",
             '  flat = traverse_util.flatten_dict(target, sep="/")\n',
             '  flat = traverse_util.flatten_dict(target, sep=".")\n',
             (T + "test_checkpoints_t5x_foreign.py::test_t5x_orbax_checkpoint_loads_every_array_exactly",)),
    Mutation("checkpoint: PEFT adapter tensor key misspelt", "prompt_tuning_jax/checkpoints/prompt_files.py",
             'PEFT_PROMPT_KEY = "prompt_embeddings"', 'PEFT_PROMPT_KEY = "prompt_embedding"',
             (T + "test_prompt_files.py::test_peft_adapter_gives_the_encoder_prompt_rows",
              T + "test_prompt_files.py::test_save_peft_adapter_loads_in_peft_with_equal_prompt_embeddings")),
    Mutation("checkpoint: Hugging Face v/o swapped in the name map", "prompt_tuning_jax/checkpoints/hf.py",
             '_ATTENTION = {"query": "q", "key": "k", "value": "v", "out": "o"}',
             '_ATTENTION = {"query": "q", "key": "k", "value": "o", "out": "v"}',
             (T + "test_checkpoints_hf.py::test_every_array_equals_its_torch_tensor_transposed_per_the_table",)),
    Mutation("checkpoint: bfloat16 arrays not cast to the parameter dtype", "prompt_tuning_jax/checkpoints/param_dtype.py",
             "  return array.astype(dtype, copy=False)", "  return array",
             (T + "test_checkpoints_t5x.py::test_legacy_bfloat16_arrays_load_as_float32",)),
    Mutation("checkpoint: empty param_states written for t5x", "prompt_tuning_jax/checkpoints/t5x.py",
             "    if param_states:  # t5x", "    if True:  # t5x",
             (T + "test_checkpoints_t5x_foreign.py::test_our_legacy_checkpoint_is_read_by_t5x",)),
    # Decoding.
    Mutation("decoding: no padding after EOS", "prompt_tuning_jax/inference/decoding.py",
             "    token = jnp.where(done, 0, token.astype(jnp.int32))\n", "    token = token.astype(jnp.int32)\n",
             (T + "test_model.py::test_greedy_decode_pads_everything_after_eos",)),
    Mutation("decoding: EOS never stops a row", "prompt_tuning_jax/inference/decoding.py",
             "return i + 1, cache, token, jnp.logical_or(done, token == eos_id), tokens, log_likelihood",
             "return i + 1, cache, token, done, tokens, log_likelihood",
             (T + "test_model.py::test_greedy_decode_follows_argmax_and_pads_after_eos",)),
    # Loss and evaluation.
    Mutation("loss: weights ignored (padding scored)", "prompt_tuning_jax/training/losses.py",
             "config.z_loss)\n    return jnp.sum(loss * weights), jnp.sum(z_loss * weights), jnp.sum(weights)",
             "config.z_loss)\n    return jnp.sum(loss), jnp.sum(z_loss * weights), jnp.sum(weights)",
             (T + "test_training_losses.py",)),
    Mutation("loss: z-loss dropped", "prompt_tuning_jax/training/losses.py",
             "total_z_loss = z_loss * jnp.square(log_z)\n  return log_z - target_logits",
             "total_z_loss = 0.0 * jnp.square(log_z)\n  return log_z - target_logits",
             (T + "test_training_losses.py",)),
    Mutation("loss: NUM_REAL_TARGET_TOKENS divides by min(weight_sum, 1)", "prompt_tuning_jax/training/losses.py",
             "return loss / jnp.maximum(weight_sum, 1.0)", "return loss / jnp.minimum(weight_sum, 1.0)",
             (T + "test_training_losses.py::test_normalize_by_real_target_tokens_gives_the_mean",)),
    Mutation("eval: loss and accuracy are means of per-batch means", "prompt_tuning_jax/training/evaluation.py",
             "    for name, value in partitioning.fetch(eval_step(trainable, frozen, batch)).items():\n"
             "      totals[name] = totals.get(name, 0.0) + float(value)\n"
             "  weight_sum = max(totals[\"weight_sum\"], 1.0)\n",
             "    metrics = partitioning.fetch(eval_step(trainable, frozen, batch))\n"
             "    for name, value in metrics.items():\n"
             "      scale = 1.0 if name in (\"weight_sum\", \"num_examples\") else "
             "max(float(metrics[\"weight_sum\"]), 1.0)\n"
             "      totals[name] = totals.get(name, 0.0) + float(value) / scale\n"
             "    totals[\"batches\"] = totals.get(\"batches\", 0.0) + 1.0\n"
             "  weight_sum = totals[\"batches\"]\n",
             (T + "test_training_evaluation.py::"
              "test_eval_with_a_partial_last_batch_equals_numpy_over_exactly_the_split[one_device]",)),
    Mutation("eval: padding rows counted as examples", "prompt_tuning_jax/training/steps.py",
             '"num_examples": jnp.sum(jnp.any(weights > 0, axis=-1)),',
             '"num_examples": jnp.asarray(weights.shape[0]),',
             (T + "test_training_evaluation.py::"
              "test_eval_with_a_partial_last_batch_equals_numpy_over_exactly_the_split[one_device]",)),
    # Data.
    Mutation("data: every shard reads shard 0", "prompt_tuning_jax/data/pipeline.py",
             "seqio.ShardInfo(index=shard_id, num_shards=num_shards)", "seqio.ShardInfo(index=0, num_shards=num_shards)",
             (T + "test_data_pipeline.py::test_shards_partition_the_split",)),
    Mutation("data: every host feeds the first host's shard", "prompt_tuning_jax/training/partitioning.py",
             "return rows.start // host_batch_size, global_batch_size // host_batch_size, host_batch_size",
             "return 0, global_batch_size // host_batch_size, host_batch_size",
             (T + "test_cli_multiprocess.py::test_two_hosts_read_disjoint_seqio_shards_that_form_every_global_batch",)),
    Mutation("data: global sharding feeds every host the first host's rows", "prompt_tuning_jax/training/input_pipeline.py",
             "start, stop = rows.start, rows.stop", "start, stop = 0, rows.stop - rows.start",
             (T + "test_training_input_pipeline.py::test_global_train_batches_split_every_global_batch_by_rows",)),
    Mutation("prompt init: class label row is its first piece, not the mean", "prompt_tuning_jax/prompts/initializers.py",
             "rows = [jnp.mean(jnp.take(embedding, jnp.asarray(ids), axis=0), axis=0) for ids in label_ids]",
             "rows = [embedding[ids[0]] for ids in label_ids]",
             (T + "test_prompts.py::test_class_label_rows_are_mean_sub_token_embeddings",
              T + "test_prompts.py::"
              "test_class_label_init_through_the_run_gin_default_path_embeds_the_tasks_sentencepiece_labels")),
)


def _copy_repo(destination: str) -> None:
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
  for name in COPIED:
    source = os.path.join(ROOT, name)
    target = os.path.join(destination, name)
    if os.path.isdir(source):
      shutil.copytree(source, target, ignore=ignore)
    else:
      shutil.copy2(source, target)


def check_anchor(mutation: Mutation) -> str | None:
  """None if the anchor occurs exactly once in the file, else the problem."""
  with open(os.path.join(ROOT, mutation.path)) as f:
    count = f.read().count(mutation.anchor)
  return None if count == 1 else f"anchor found {count} times in {mutation.path} (expected once): fix the mutation"


def run_tests(tests: tuple[str, ...], mutation: Mutation | None) -> tuple[int, float, str]:
  """Runs `tests` in a fresh copy of the repository (with `mutation` applied); (exit status, seconds, output)."""
  start = time.time()
  with tempfile.TemporaryDirectory(prefix="planted_bug_") as copy:
    _copy_repo(copy)
    if mutation is not None:
      path = os.path.join(copy, mutation.path)
      with open(path) as f:
        text = f.read()
      if text.count(mutation.anchor) != 1:
        raise RuntimeError(f"{mutation.name}: anchor not found exactly once in the copy of {mutation.path}")
      with open(path, "w") as f:
        f.write(text.replace(mutation.anchor, mutation.replacement))
    env = {**os.environ, "PYTHONPATH": copy, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PROMPT_TUNING_JAX_REQUIRE_PARITY", None)
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly",
               *tests]
    try:
      result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
      status, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired:
      status, output = -1, f"timed out after {TIMEOUT_S} s"
  return status, time.time() - start, output


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("-j", "--jobs", type=int, default=2, help="mutations run at once")
  parser.add_argument("-k", "--only", default="", help="run the mutations whose name contains this text")
  parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
  parser.add_argument("--skip_baseline", action="store_true", help="do not run the unmutated tests first")
  args = parser.parse_args(argv)
  mutations = [m for m in MUTATIONS if args.only in m.name]
  if args.list:
    for m in mutations:
      print(f"{m.name}\n    {m.path}: {' '.join(m.tests)}")
    return 0
  problems = [f"{m.name}: {problem}" for m in mutations if (problem := check_anchor(m))]
  if problems:
    print("planted_bugs: error: " + "; ".join(problems), file=sys.stderr)
    return 1
  if not mutations:
    print(f"planted_bugs: error: no mutation name contains {args.only!r}; see --list", file=sys.stderr)
    return 1
  with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
    if not args.skip_baseline:  # every selected test, unmutated, in one run
      selection = tuple(sorted({test for m in mutations for test in m.tests}))
      status, seconds, output = run_tests(selection, None)
      if status != 0:
        print(f"planted_bugs: error: the unmutated tests fail (exit {status}); fix them first:\n{output[-3000:]}",
              file=sys.stderr)
        return 1
      print(f"baseline: {len(selection)} test selections pass unmutated ({seconds:.0f} s)", flush=True)
    results = pool.map(lambda m: (m, *run_tests(m.tests, m)), mutations)
    survived, broken = [], []
    for mutation, status, seconds, output in results:
      if status == 1:
        verdict = "killed"
      elif status == 0 and " passed" not in output:  # e.g. an optional oracle (t5x, torch) is missing
        verdict = "UNTESTED"
        broken.append(mutation.name)
        print(output[-1000:])
      elif status == 0:
        verdict = "SURVIVED"
        survived.append(mutation.name)
      else:
        verdict = f"ERROR (pytest exit {status})"
        broken.append(mutation.name)
        print(output[-2000:])
      print(f"{verdict:9s} {seconds:6.1f}s  {mutation.name}  [{' '.join(mutation.tests)}]", flush=True)
      if status == 1:  # why: the first failure line pytest printed
        reason = next((line for line in output.splitlines() if line.startswith("E ")), "")
        print(f"          {reason[:150]}")
  print(f"{len(mutations) - len(survived) - len(broken)} of {len(mutations)} mutations killed; "
        f"{len(survived)} survived{': ' + ', '.join(survived) if survived else ''}"
        f"{f'; {len(broken)} could not run: ' + ', '.join(broken) if broken else ''}")
  return 1 if survived or broken else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
