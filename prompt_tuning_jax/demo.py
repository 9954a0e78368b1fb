r"""The offline demo: prompt-tune a small frozen T5 1.1 on a task it knows only by a prefix it no longer gets.

  python -m prompt_tuning_jax.demo [--model_dir=demo_run] [--fresh] [--train_steps=300] [--model_finetune]

The packaged model (`demo_assets/`, made by scripts/pretrain_demo_model.sh) was pretrained on the synthetic
tasks, each named by a prefix ("reverse: k d a f" -> "f a d k"). The demo's task gives the same inputs without
the prefix, so the frozen model alone cannot know what is asked; a soft prompt, started from a task-agnostic
init (random uniform by default, or sampled vocabulary; never the prefix text), must learn to say it.

Every stage runs through the project's own code paths, configured by the gin stack of `prompt_tuning_gin`
(see gin_configs/demo/prompt_tuning.gin): `runs.evaluate` for the rows before training (no prompt; the initial
prompt; the prefixed task for reference), `runs.train` (what `python -m prompt_tuning_jax.train` calls) for
prompt tuning and, with --model_finetune, for full fine-tuning. It prints the measured results, example
predictions and the learned prompt's nearest vocabulary tokens, and writes to MODEL_DIR: the prompt (.npy and
PEFT adapter), a loss/accuracy curve (PNG), results.json, and each run's checkpoints, metrics.jsonl and
config.gin. Re-running resumes a finished or interrupted run; --fresh starts over.

Then the serving stage (`serve_many_tasks`; --serve_tasks, default sort,last): prompts for more taskless tasks,
all served with the first from the one frozen model in mixed batches through `inference.Predictor` (exact match
mixed vs alone, and throughput), and an ensemble of --ensemble_size prompts for --task with its majority vote.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prompt_tuning_jax.training import native_logs

# TensorFlow's and XLA's C++ banners (oneDNN, CUDA probes, tf.data cache notices) would bury the demo's report.
native_logs.quiet_imports()

import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from prompt_tuning_jax import checkpoints as checkpoint_io  # noqa: E402
from prompt_tuning_jax.data import pipeline, postprocessors, synthetic, vocab  # noqa: E402
from prompt_tuning_jax.inference import nearest_neighbors  # noqa: E402
from prompt_tuning_jax.inference.decoding import decode_examples  # noqa: E402
from prompt_tuning_jax.model import t5  # noqa: E402
from prompt_tuning_jax.training import checkpointing, cli, runs, train_state  # noqa: E402
from prompt_tuning_jax.training.metrics_writer import METRICS_FILE, read_metrics  # noqa: E402

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_assets")
MARKER_FILE = "demo_run.json"  # marks a MODEL_DIR as the demo's own, so --fresh may delete it
RESULTS_FILE = "results.json"
CURVES_FILE = "curves.png"
PROMPT_NPY_FILE = "prompt.npy"
PEFT_DIR = "peft_adapter"
PROMPT_TUNING_DIR = "prompt_tuning"
MODEL_FINETUNE_DIR = "model_finetune"
# --prompt_init -> (gin file, PEFT's name for the init). Both are task-agnostic: no task text enters a prompt.
PROMPT_INITS = {"sampled_vocab": ("prompts/from_sampled_vocab.gin", "SAMPLE_VOCAB"),
                "uniform": ("prompts/from_uniform.gin", "RANDOM")}
MODEL_GIN = "demo/t5_1_1_demo.gin"
NUM_SHOWN = 4  # validation examples printed with their predictions
TASK_GIN = "demo/task.gin"


def pretrained_checkpoint_path(assets_dir: str = ASSETS_DIR) -> str:
  """The packaged demo model: the one T5X legacy `checkpoint_N` directory in `demo_assets/`."""
  found = sorted(e for e in (os.listdir(assets_dir) if os.path.isdir(assets_dir) else [])
                 if re.fullmatch(r"checkpoint_\d+", e) and os.path.isdir(os.path.join(assets_dir, e)))
  if len(found) != 1:
    raise FileNotFoundError(f"{assets_dir} holds {len(found)} checkpoint_N directories ({found}), expected "
                            "exactly one; restore it from git or rebuild it: scripts/pretrain_demo_model.sh")
  return os.path.join(assets_dir, found[0])


def export_pretrained(model_dir: str, assets_dir: str = ASSETS_DIR) -> str:
  """Writes the pretraining run's latest checkpoint in `model_dir` to `assets_dir` as a T5X legacy checkpoint.

  The run's operative config and final validation metrics go alongside (pretrain_config.gin,
  pretrain_metrics.json); the previous packaged checkpoint is replaced. Returns the checkpoint directory.
  """
  directory, step = runs.resolve_checkpoint(model_dir)
  params = checkpoint_io.load_t5x_orbax(directory)
  validation = [m for m in read_metrics(model_dir) if m["split"] == "validation" and m["step"] == step]
  if not validation:
    raise ValueError(f"{model_dir} has no validation metrics at step {step}; pretrain with an evaluation at "
                     "the last step (scripts/pretrain_demo_model.sh does)")
  os.makedirs(assets_dir, exist_ok=True)
  for entry in os.listdir(assets_dir):
    if re.fullmatch(r"checkpoint_\d+", entry):
      shutil.rmtree(os.path.join(assets_dir, entry))
  written = checkpoint_io.save_t5x_legacy(params, assets_dir, step)
  shutil.copyfile(os.path.join(model_dir, runs.CONFIG_FILE), os.path.join(assets_dir, "pretrain_config.gin"))
  with open(os.path.join(assets_dir, "pretrain_metrics.json"), "w") as f:
    json.dump(validation[-1], f, indent=2, sort_keys=True)
  return written


def prepare_model_dir(model_dir: str, fresh: bool) -> str:
  """Creates MODEL_DIR, or reuses the demo's own to resume; refuses a directory the demo did not make."""
  model_dir = os.path.abspath(model_dir)
  is_demo_dir = os.path.isfile(os.path.join(model_dir, MARKER_FILE))
  if os.path.isdir(model_dir) and os.listdir(model_dir) and not is_demo_dir:
    raise ValueError(f"--model_dir {model_dir} exists and is not a demo run (no {MARKER_FILE}); pass an "
                     "empty or new directory")
  if fresh and is_demo_dir:
    shutil.rmtree(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  return model_dir


def parse_demo_gin(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Replaces the gin config by `gin_files` + `bindings` (searched in gin_configs/, like the CLIs)."""
  gin.clear_config()
  cli.parse_gin(gin_files, bindings, [])


def prompt_tuning_gin(prompt_init: str) -> list[str]:
  """The demo's prompt-tuning stack: model size, prompt, its initializer, the paper's recipe (and the
  evaluation of a prompt), the demo's task and settings."""
  return [MODEL_GIN, "models/prompt.gin", PROMPT_INITS[prompt_init][0], "runs/prompt_finetune.gin",
          "runs/prompt_eval.gin", TASK_GIN, "demo/prompt_tuning.gin"]


def model_finetune_gin() -> list[str]:
  """The full fine-tuning baseline's stack: no prompt, every parameter trains (T5X's fine-tuning recipe)."""
  return [MODEL_GIN, "runs/model_finetune.gin", TASK_GIN]


def check_not_shorter(run_dir: str, train_steps: int) -> None:
  """Refuses to replace a longer earlier run's results (without --fresh); says what a re-run resumes."""
  done = [int(m.group(1)) for name in (os.listdir(run_dir) if os.path.isdir(run_dir) else [])
          if (m := re.fullmatch(r"checkpoint_(\d+)", name))]
  if not done:
    return
  if max(done) > train_steps:
    raise ValueError(f"{run_dir} holds a run of {max(done)} steps; --train_steps {train_steps} would replace its "
                     f"results with a shorter run's: pass --fresh to start over, or --train_steps {max(done)} or "
                     "more to continue it")
  what = "is complete" if max(done) == train_steps else f"continues to step {train_steps}"
  print(f"demo: resuming {run_dir} from checkpoint_{max(done)} (the run {what})", flush=True)


def final_validation(model_dir: str, step: int) -> dict[str, float]:
  """The validation metrics the trainer logged at `step` (the last one)."""
  for entry in read_metrics(model_dir):
    if entry["split"] == "validation" and entry["step"] == step:
      return entry
  raise ValueError(f"{model_dir}/{METRICS_FILE} has no validation metrics at step {step}: the run there was "
                   "made with other settings; rerun with --fresh")


def train_speed(model_dir: str) -> float:
  """Median steps/s over the trainer's reports, leaving out the first (it includes compilation)."""
  speeds = [e["steps_per_second"] for e in read_metrics(model_dir) if e["split"] == "train"][1:]
  return float(np.median(speeds)) if speeds else float("nan")


def parameter_counts(model: t5.Transformer, task_feature_lengths: Mapping[str, int],
                     trainable_regex: str) -> tuple[int, int]:
  """(trainable, total) parameter counts of `model` when `trainable_regex` selects what trains."""
  shapes, _ = runs.abstract_params(model, task_feature_lengths)
  trainable, _ = train_state.split_params(shapes, trainable_regex)
  count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
  return count(trainable), count(shapes)


def the_prompt(params: Any) -> np.ndarray:
  """The prompt [prompt_length, embed] of a parameter tree."""
  return np.asarray(traverse_util.flatten_dict(params)[checkpointing.PROMPT_PATH])


def describe_drift(initial: np.ndarray, learned: np.ndarray, embedding: np.ndarray,
                   vocabulary: nearest_neighbors.Decoder, k: int = 3) -> list[str]:
  """Per prompt row: the learned row's nearest tokens, then the initial row's nearest, to show the drift."""
  start_ids, start_sims = nearest_neighbors.nearest_tokens(initial, embedding, k=1)
  lines = nearest_neighbors.describe_prompt(learned, embedding, vocabulary, k)
  return [f"{line}   (initially {vocabulary.decode([int(i)])!r} {s:.2f})"
          for line, i, s in zip(lines, start_ids[:, 0], start_sims[:, 0], strict=True)]


def plot_curves(path: str, prompt_dir: str, initial: Mapping[str, float], no_prompt: Mapping[str, float],
                with_prefix: Mapping[str, float] | None, accuracy_key: str,
                finetune_dir: str | None = None) -> str:
  """Writes the train loss and validation exact match of the run(s) against their steps, as a PNG."""
  import matplotlib

  matplotlib.use("Agg")  # no display needed
  from matplotlib import pyplot as plt

  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
  runs_to_plot = [("prompt tuning", prompt_dir, "C0")] + ([("full fine-tuning", finetune_dir, "C1")]
                                                          if finetune_dir else [])
  for label, directory, color in runs_to_plot:
    metrics = read_metrics(directory)
    train = [e for e in metrics if e["split"] == "train"]
    loss_ax.plot([e["step"] for e in train], [e["loss"] for e in train], color=color, label=label)
    validation = [e for e in metrics if e["split"] == "validation"]
    steps = [e["step"] for e in validation]
    accuracy = [e[accuracy_key] for e in validation]
    # Step 0: the initial prompt, or for fine-tuning the untouched model (= no prompt).
    start = initial if label == "prompt tuning" else no_prompt
    steps, accuracy = [0, *steps], [start[accuracy_key], *accuracy]
    acc_ax.plot(steps, accuracy, "o-", color=color, label=label)
  acc_ax.axhline(no_prompt[accuracy_key], color="gray", linestyle="--", label="no prompt")
  if with_prefix is not None:
    acc_ax.axhline(with_prefix[accuracy_key], color="green", linestyle=":", label="with the task prefix")
  loss_ax.set(xlabel="step", ylabel="train loss per target token", yscale="log", title="training loss")
  acc_ax.set(xlabel="step", ylabel="exact match (%)", ylim=(-2, 102), title="validation exact match")
  loss_ax.legend()
  acc_ax.legend(loc="center right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def format_table(rows: Sequence[tuple[str, Mapping[str, float] | None]], accuracy_key: str,
                 token_key: str | None) -> list[str]:
  """The results table: exact match, per-token accuracy of the decoded output, teacher-forced loss."""
  header = f"{'':40s} {'exact match':>12s} {'token acc.':>11s} {'loss':>8s}"
  lines = [header, "-" * len(header)]
  for name, metrics in rows:
    if metrics is None:
      continue
    token = f"{metrics[token_key]:10.1f}%" if token_key and token_key in metrics else f"{'-':>11s}"
    lines.append(f"{name:40s} {metrics[accuracy_key]:11.1f}% {token} {metrics['loss']:8.3f}")
  return lines


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   prog="python -m prompt_tuning_jax.demo")
  parser.add_argument("--model_dir", default="demo_run", help="where everything goes (default ./demo_run)")
  parser.add_argument("--fresh", action="store_true", help="delete a previous demo run in --model_dir first")
  parser.add_argument("--task", default="reverse", choices=sorted(synthetic.TARGET_FNS),
                      help="the synthetic task, given to the model without its prefix")
  parser.add_argument("--prompt_init", default="uniform", choices=sorted(PROMPT_INITS),
                      help="uniform: random in [-0.5, 0.5]; sampled_vocab: embeddings of random tokens")
  parser.add_argument("--pretrained", default=None,
                      help="the frozen model's checkpoint (default: the packaged one in demo_assets/)")
  parser.add_argument("--prompt_length", type=int, default=None, help="default: the gin's PROMPT_LENGTH, 20")
  parser.add_argument("--train_steps", type=int, default=None, help="default: the gin's TRAIN_STEPS, 300")
  parser.add_argument("--eval_period", type=int, default=None, help="default: the gin's EVAL_PERIOD, 50")
  parser.add_argument("--eval_examples", type=int, default=None,
                      help="validation examples per evaluation (default: all 500)")
  parser.add_argument("--model_finetune", action="store_true",
                      help="also fine-tune the whole model on the same task and budget, as a baseline")
  parser.add_argument("--serve_tasks", default="sort,last",
                      help="more tasks whose prompts are trained and then served with --task's in mixed batches "
                           "(comma-separated; empty: skip the serving stage)")
  parser.add_argument("--serve_steps", type=int, default=300, help="training steps of each --serve_tasks prompt")
  parser.add_argument("--serve_examples", type=int, default=128,
                      help="validation examples per task in the mixed-batch serving stage")
  parser.add_argument("--ensemble_size", type=int, default=3,
                      help="K prompts for --task in the ensemble, trained from seeds 1..K (short runs, so that "
                           "they err and the vote has work to do)")
  parser.add_argument("--ensemble_steps", type=int, default=30, help="training steps of each ensemble prompt")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="extra gin bindings for every run, e.g. 'LEARNING_RATE = 0.1' (repeatable)")
  return parser.parse_args(argv)


def _bindings(args: argparse.Namespace, model_dir: str) -> list[str]:
  """The flags as gin bindings, stacked after the demo gin files."""
  task = synthetic.task_name(args.task, taskless=True)
  checkpoint = os.path.abspath(args.pretrained or pretrained_checkpoint_path())
  bindings = [f"MODEL_DIR = {model_dir!r}", f"MIXTURE_OR_TASK_NAME = {task!r}",
              f"INITIAL_CHECKPOINT_PATH = {checkpoint!r}"]
  for macro, value in (("PROMPT_LENGTH", args.prompt_length), ("TRAIN_STEPS", args.train_steps),
                       ("EVAL_PERIOD", args.eval_period), ("EVAL_NUM_EXAMPLES", args.eval_examples)):
    if value is not None:
      if value <= 0:
        raise ValueError(f"--{macro.lower()} must be positive, got {value}")
      bindings.append(f"{macro} = {value}")
  return bindings + list(args.gin_bindings)


def evaluate_before(model_dir: str, bare_model: t5.Transformer,
                    task: str) -> dict[str, dict[str, float] | None]:
  """`runs.evaluate` (as gin configures it) of the frozen model before training, on the validation split.

  Returns:
    {"no_prompt": the model alone, "initial_prompt": with the prompt training starts from, "with_prefix":
    the model alone on the same inputs with their task prefix (what it can do when told the task), keyed as
    the taskless task's metrics; None if `task` has no prefixed twin}.
  """
  evaluate = gin.get_configurable(runs.evaluate)
  results: dict[str, dict[str, float] | None] = {
      "no_prompt": evaluate(model=bare_model, output_dir=os.path.join(model_dir, "eval_no_prompt")),
      "initial_prompt": evaluate(output_dir=os.path.join(model_dir, "eval_initial_prompt")),
      "with_prefix": None}
  prefixed = task.removeprefix("taskless_")
  if prefixed != task:
    reference = evaluate(model=bare_model, mixture_or_task_name=prefixed,
                         output_dir=os.path.join(model_dir, "eval_with_prefix"))
    results["with_prefix"] = {name.replace(f"{prefixed}/", f"{task}/"): value
                              for name, value in reference.items()}
  return results


def train_and_measure(model_dir: str) -> tuple[dict[str, float], float]:
  """`runs.train` as gin configures it (resuming a previous run) -> (final validation metrics, seconds)."""
  started = time.perf_counter()
  gin.get_configurable(runs.train)()
  seconds = time.perf_counter() - started
  return final_validation(model_dir, gin.query_parameter("%TRAIN_STEPS")), seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
  """The whole demo; returns (and writes to MODEL_DIR/results.json) what it measured."""
  started = time.perf_counter()
  if args.serve_tasks:
    check_serving_flags(args)
  model_dir = prepare_model_dir(args.model_dir, args.fresh)
  prompt_dir = os.path.join(model_dir, PROMPT_TUNING_DIR)
  parse_demo_gin(prompt_tuning_gin(args.prompt_init), _bindings(args, prompt_dir))
  task = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  train_steps = gin.query_parameter("%TRAIN_STEPS")
  for run_dir in [prompt_dir] + ([os.path.join(model_dir, MODEL_FINETUNE_DIR)] if args.model_finetune else []):
    check_not_shorter(run_dir, train_steps)  # before anything is written
  with open(os.path.join(model_dir, MARKER_FILE), "w") as f:
    json.dump(vars(args), f, indent=2, sort_keys=True)
  prompt_regex = gin.query_parameter("%PROMPT_REGEX")
  checkpoint = gin.query_parameter("%INITIAL_CHECKPOINT_PATH")
  vocabulary = vocab.synthetic_vocabulary()
  model = gin.get_configurable(t5.Transformer)()
  bare_model = gin.get_configurable(t5.Transformer)(prompt_factory=None)
  print(f"demo: frozen model {checkpoint}\ndemo: task {task} (validation split), writing to {model_dir}\n"
        "demo: evaluating before training ...", flush=True)
  results: dict[str, Any] = {"task": task, "model": checkpoint, "train_steps": train_steps,
                             "prompt_init": args.prompt_init, **evaluate_before(model_dir, bare_model, task)}

  print(f"demo: prompt tuning for {train_steps} steps ...", flush=True)
  results["learned_prompt"], results["prompt_tuning_seconds"] = train_and_measure(prompt_dir)
  results["prompt_tuning_steps_per_second"] = train_speed(prompt_dir)
  results["trainable_parameters"], results["total_parameters"] = parameter_counts(model, lengths,
                                                                                  prompt_regex)
  prompt = checkpointing.read_step_prompt(prompt_dir, train_steps)
  results["prompt_length"] = int(prompt.shape[0])
  initial_params = runs.initial_params(model, lengths, checkpoint, prompt_regex, gin.query_parameter("%SEED"))
  learned_params = runs.overlay_trained(initial_params, traverse_util.unflatten_dict(
      {checkpointing.PROMPT_PATH: prompt}), f"{prompt_dir}/numpy_checkpoints")
  _, frozen_params = train_state.split_params(initial_params, prompt_regex)
  examples = list(pipeline.get_task_dataset(task, lengths, "validation").take(NUM_SHOWN).as_numpy_iterator())
  shown = {name: decode_examples(m, p, examples, lengths["inputs"], lengths["targets"], vocabulary)
           for name, m, p in (("no prompt", bare_model, frozen_params),
                              ("learned prompt", model, learned_params))}
  written = {
      "prompt (.npy)": checkpoint_io.save_prompt_npy(prompt, os.path.join(model_dir, PROMPT_NPY_FILE)),
      "prompt (PEFT adapter)": checkpoint_io.save_peft_adapter(
          prompt, os.path.join(model_dir, PEFT_DIR), num_layers=model.config.num_encoder_layers,
          num_attention_heads=model.config.num_heads, prompt_tuning_init=PROMPT_INITS[args.prompt_init][1]),
      "training metrics": os.path.join(prompt_dir, METRICS_FILE),
      "operative gin config": os.path.join(prompt_dir, runs.CONFIG_FILE)}

  finetune_dir = None
  results["model_finetune"] = None
  if args.model_finetune:
    finetune_dir = os.path.join(model_dir, MODEL_FINETUNE_DIR)
    print(f"demo: full fine-tuning for {train_steps} steps ...", flush=True)
    parse_demo_gin(model_finetune_gin(), _bindings(args, finetune_dir))
    results["model_finetune"], results["model_finetune_seconds"] = train_and_measure(finetune_dir)
    results["model_finetune_steps_per_second"] = train_speed(finetune_dir)
    results["model_finetune_trainable_parameters"] = parameter_counts(gin.get_configurable(t5.Transformer)(),
                                                                      lengths, ".*")[0]

  written["curves"] = plot_curves(os.path.join(model_dir, CURVES_FILE), prompt_dir, results["initial_prompt"],
                                  results["no_prompt"], results["with_prefix"], f"{task}/sequence_accuracy",
                                  finetune_dir)
  written["results"] = os.path.join(model_dir, RESULTS_FILE)
  results["total_seconds"] = time.perf_counter() - started
  with open(written["results"], "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)

  embedding = checkpoint_io.load_params(checkpoint)[0]["token_embedder"]["embedding"][:vocabulary.vocab_size]
  drift = describe_drift(the_prompt(initial_params), prompt, embedding, vocabulary)
  print_report(results, examples, shown, drift, written, model_dir)
  if args.serve_tasks:
    results["serving"] = serve_many_tasks(args, model_dir, prompt)
    results["total_seconds"] = time.perf_counter() - started
    with open(written["results"], "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
    print(f"demo: with the serving stage, done in {results['total_seconds']:.0f} s")
  return results


def print_report(results: Mapping[str, Any], examples: Sequence[Mapping[str, Any]],
                 shown: Mapping[str, Sequence[str]], prompt_lines: Sequence[str], written: Mapping[str, str],
                 model_dir: str) -> None:
  """Prints the results table, example predictions, the prompt's nearest tokens and where files went."""
  task, steps = results["task"], results["train_steps"]
  prefix = task.removeprefix("taskless_synthetic_")
  rows = [(f"with the '{prefix}:' prefix (reference)", results["with_prefix"]),
          ("no prompt", results["no_prompt"]),
          (f"initial prompt ({results['prompt_init']})", results["initial_prompt"]),
          (f"learned prompt ({steps} steps)", results["learned_prompt"]),
          (f"full fine-tuning ({steps} steps)", results["model_finetune"])]
  accuracy_key, token_key = f"{task}/sequence_accuracy", f"{task}/token_accuracy"
  print(f"\n== {task}: validation, {int(results['learned_prompt']['num_examples'])} examples, "
        "inputs without the task prefix ==")
  has_token_accuracy = token_key in results["learned_prompt"]  # only sequence outputs have one
  print("\n".join(format_table(rows, accuracy_key, token_key if has_token_accuracy else None)))
  trainable, total = results["trainable_parameters"], results["total_parameters"]
  print(f"prompt tuning: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%), "
        f"{results['prompt_tuning_steps_per_second']:.1f} steps/s, "
        f"{results['prompt_tuning_seconds']:.0f} s with compilation and evaluations")
  if results["model_finetune"] is not None:
    print(f"full fine-tuning: {results['model_finetune_trainable_parameters']:,} trainable parameters, "
          f"{results['model_finetune_steps_per_second']:.1f} steps/s, "
          f"{results['model_finetune_seconds']:.0f} s")
  print(f"\n== the first {len(examples)} validation examples, greedy decoding ==")
  for row, example in enumerate(examples):
    print(f"  input {postprocessors.as_text(example['inputs_pretokenized'])!r:20s} target "
          f"{postprocessors.as_text(example['targets_pretokenized'])!r:18s} "
          + "  ".join(f"{name}: {predictions[row]!r:18s}" for name, predictions in shown.items()))
  print("\n== the learned prompt's nearest vocabulary tokens (cosine similarity to the input embeddings) ==")
  print("\n".join(prompt_lines))
  print(f"\n== written to {model_dir} ==")
  for what, path in written.items():
    print(f"  {what:22s} {path}")
  print(f"demo: done in {results['total_seconds']:.0f} s")


SERVE_DIR = "serving"  # MODEL_DIR/serving/<name>: the extra prompt-tuning runs of the serving stage
SERVE_BATCH_SIZE = 32
SPEED_ROUNDS = 3


def train_extra_prompt(args: argparse.Namespace, model_dir: str, task: str, steps: int, seed: int) -> np.ndarray:
  """Prompt-tunes one more prompt (`task` without its prefix, `steps`, `seed`) like the main run; its prompt."""
  run_dir = os.path.join(model_dir, SERVE_DIR, f"{task}_seed{seed}_{steps}steps")
  overrides = argparse.Namespace(**{**vars(args), "task": task, "train_steps": steps, "eval_period": steps,
                                    "eval_examples": min(64, args.eval_examples or 64)})
  parse_demo_gin(prompt_tuning_gin(args.prompt_init), _bindings(overrides, run_dir) + [f"SEED = {seed}"])
  gin.get_configurable(runs.train)()
  return checkpointing.read_step_prompt(run_dir, steps)


def _served_examples(task: str, count: int) -> list[dict[str, Any]]:
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  examples = pipeline.get_task_dataset(synthetic.task_name(task, taskless=True), lengths, "validation")
  return [{"task": task, "inputs": postprocessors.as_text(ex["inputs_pretokenized"]),
           "targets": postprocessors.as_text(ex["targets_pretokenized"])}
          for ex in examples.take(count).as_numpy_iterator()]


def _timed_predict(predictor: Any, inputs: Sequence[str], names: Sequence[str], max_decode_length: int,
                   per_call: int) -> tuple[list[str], float]:
  """Predictions and examples/s, calling the predictor on `per_call` rows at a time (compiled beforehand)."""
  predictor.predict(inputs[:per_call], names[:per_call], max_decode_length=max_decode_length)  # compile
  started = time.perf_counter()
  texts = []
  for start in range(0, len(inputs), per_call):
    predictions = predictor.predict(inputs[start:start + per_call], names[start:start + per_call],
                                    max_decode_length=max_decode_length)
    texts += [p.prediction for p in predictions]
  return texts, len(inputs) / (time.perf_counter() - started)


def check_serving_flags(args: argparse.Namespace) -> list[str]:
  """The serving stage's tasks (--task first); bad serving flags are refused before anything trains."""
  for flag in ("serve_steps", "serve_examples", "ensemble_size", "ensemble_steps"):
    if getattr(args, flag) < 1:
      raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
  tasks = [args.task] + [t for t in args.serve_tasks.split(",") if t and t != args.task]
  unknown = [t for t in tasks if t not in synthetic.TARGET_FNS]
  if unknown:
    raise ValueError(f"--serve_tasks names unknown tasks {unknown}; choose from {sorted(synthetic.TARGET_FNS)}")
  return tasks


def serve_many_tasks(args: argparse.Namespace, model_dir: str, main_prompt: np.ndarray) -> dict[str, Any]:
  """The paper's serving promise on the demo: prompts of several tasks from one frozen model, in mixed batches.

  Trains a prompt for each of --serve_tasks, then serves the validation examples of every task (--task's too),
  interleaved so that every batch mixes the tasks, through one `inference.Predictor` (one encoder pass and one
  decode per batch); and serves each task alone. Then an ensemble: --ensemble_size prompts for --task (seeds
  1..K, --ensemble_steps each) in one batched pass, majority vote. Prints both tables and returns their numbers.
  """
  from prompt_tuning_jax import inference
  from prompt_tuning_jax.inference import ensemble

  tasks = check_serving_flags(args)
  prompts = {args.task: main_prompt}
  for task in tasks[1:]:
    print(f"demo: prompt tuning {task} (no prefix) for {args.serve_steps} steps, to serve it too ...", flush=True)
    prompts[task] = train_extra_prompt(args, model_dir, task, args.serve_steps, seed=0)
  members = {}
  for seed in range(1, args.ensemble_size + 1):
    print(f"demo: prompt tuning {args.task}, seed {seed}, for {args.ensemble_steps} steps (ensemble) ...",
          flush=True)
    members[f"{args.task} seed {seed}"] = train_extra_prompt(args, model_dir, args.task, args.ensemble_steps, seed)
  max_decode_length = gin.query_parameter("%TASK_FEATURE_LENGTHS")["targets"]
  max_input_length = gin.query_parameter("%TASK_FEATURE_LENGTHS")["inputs"]
  checkpoint = gin.query_parameter("%INITIAL_CHECKPOINT_PATH")
  model = gin.get_configurable(t5.Transformer)()
  vocabulary = vocab.synthetic_vocabulary()
  per_task = {task: _served_examples(task, args.serve_examples) for task in tasks}

  print(f"demo: serving {len(tasks)} tasks from one frozen model ...", flush=True)
  predictor = inference.Predictor.load(checkpoint, prompts, model=model, vocabulary=vocabulary,
                                       batch_size=SERVE_BATCH_SIZE, max_input_length=max_input_length)
  mixed = [ex for group in zip(*per_task.values(), strict=True) for ex in group]  # task 0, 1, 2, 0, 1, 2, ...
  served: dict[str, Any] = {"tasks": {}, "batch_size": SERVE_BATCH_SIZE}
  speeds: dict[str, list[float]] = {"mixed": [], "alone": []}
  for _ in range(SPEED_ROUNDS):  # alternated, best of each: a busy machine slows one round, not one side
    mixed_texts, speed = _timed_predict(predictor, [e["inputs"] for e in mixed], [e["task"] for e in mixed],
                                        max_decode_length, SERVE_BATCH_SIZE)
    speeds["mixed"].append(speed)
    alone_texts, alone_seconds = {}, 0.0
    for task, examples in per_task.items():
      inputs = [e["inputs"] for e in examples]
      alone_texts[task], speed = _timed_predict(predictor, inputs, [task] * len(inputs), max_decode_length,
                                                SERVE_BATCH_SIZE)
      alone_seconds += len(inputs) / speed
    speeds["alone"].append(len(mixed) / alone_seconds)
  for task, examples in per_task.items():
    targets, alone = [e["targets"] for e in examples], alone_texts[task]
    mine = [text for e, text in zip(mixed, mixed_texts, strict=True) if e["task"] == task]
    served["tasks"][task] = {"mixed": ensemble.exact_match(mine, targets),
                             "alone": ensemble.exact_match(alone, targets), "identical": mine == alone}
  served["mixed_examples_per_second"] = max(speeds["mixed"])
  served["alone_examples_per_second"] = max(speeds["alone"])

  members_predictor = inference.Predictor.load(checkpoint, members, model=model, vocabulary=vocabulary,
                                               batch_size=len(members) * SERVE_BATCH_SIZE,
                                               max_input_length=max_input_length)
  examples = per_task[args.task]
  targets = [e["targets"] for e in examples]
  inputs = [e["inputs"] for e in examples]
  results = [ensemble.ensemble_predict(members_predictor, inputs[start:start + SERVE_BATCH_SIZE], list(members),
                                       max_decode_length=max_decode_length)
             for start in range(0, len(inputs), SERVE_BATCH_SIZE)]
  combined = ensemble.concatenate(results)
  served["ensemble"] = ensemble.ensemble_metrics(combined, targets)
  # Shown: the first example the prompts disagree on (else the first).
  shown = next((i for i, votes in enumerate(combined.votes) if votes < len(members)), 0)
  served["ensemble_example"] = {"input": examples[shown]["inputs"], "target": targets[shown],
                                "answers": [combined.per_prompt[k][shown] for k in range(len(members))],
                                "vote": combined.answers[shown], "votes": combined.votes[shown]}
  print_serving_report(served, list(members), len(examples), args)
  return served


def print_serving_report(served: Mapping[str, Any], members: Sequence[str], num_examples: int,
                         args: argparse.Namespace) -> None:
  """The per-task table (mixed vs alone) and the ensemble's Table 3 rows."""
  from prompt_tuning_jax.inference import ensemble

  print(f"\n== one frozen model, {len(served['tasks'])} prompts: {num_examples} validation examples per task, "
        f"batches of {served['batch_size']} ==")
  print(f"{'task (no prefix)':18s} {'exact match, mixed batches':>27s} {'alone':>8s} {'identical':>10s}")
  for task, row in served["tasks"].items():
    print(f"{task:18s} {row['mixed']:26.1f}% {row['alone']:7.1f}% {'yes' if row['identical'] else 'NO':>10s}")
  print(f"throughput (best of {SPEED_ROUNDS} alternated rounds): {served['mixed_examples_per_second']:.0f} "
        f"examples/s in mixed batches, {served['alone_examples_per_second']:.0f} examples/s one task at a time "
        "(same predictor and batch size, greedy)")
  print(f"\n== prompt ensemble for {args.task}: {len(members)} prompts in one batched pass, majority vote "
        f"(ties: the earliest prompt's answer) ==")
  print("\n".join(ensemble.format_ensemble_table(served["ensemble"], members)))
  example = served["ensemble_example"]
  print(f"e.g. input {example['input']!r} (target {example['target']!r}): answers {example['answers']} -> vote "
        f"{example['vote']!r} ({example['votes']} of {len(members)})")


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  with cli.errors_as_one_line("demo"):
    run(args)


if __name__ == "__main__":
  main()
