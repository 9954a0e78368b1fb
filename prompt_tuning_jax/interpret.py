r"""Interprets a trained prompt: each row's nearest vocabulary tokens (cosine similarity to the frozen input
embeddings), a PNG of the similarities, and the paper's two observations (section 7) as numbers.

  python -m prompt_tuning_jax.interpret --checkpoint=/ckpts/t5_1_1_base/checkpoint_1100000 \
    --prompt=/runs/rte --task=super_glue_rte_v102 --top_k=5 --output_png=rte_prompt.png

  --checkpoint=DIR     the frozen model (T5X legacy/orbax, Hugging Face)
  --prompt=PATH        .npy / encoder.prompt.prompt.prompt / PEFT adapter dir / training MODEL_DIR or checkpoint_N
  --task=NAME          a registered task: its vocabulary and class labels
  --vocabulary=SPM     or a SentencePiece model file ('synthetic': the demo's), with --labels=a,b,c
  --top_k=5            neighbours per row;  --output_png=FILE  the similarity heatmap
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prompt_tuning_jax.training import native_logs

native_logs.quiet_imports()  # before TensorFlow and jax are imported below

import numpy as np  # noqa: E402
import seqio  # noqa: E402

from prompt_tuning_jax import checkpoints as checkpoint_io  # noqa: E402
from prompt_tuning_jax.data import tasks, vocab  # noqa: E402
from prompt_tuning_jax.inference import nearest_neighbors  # noqa: E402
from prompt_tuning_jax.inference.bank import load_prompt_source  # noqa: E402
from prompt_tuning_jax.training import cli, runs  # noqa: E402


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m prompt_tuning_jax.interpret", description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True, help="the frozen model's checkpoint directory")
  parser.add_argument("--prompt", required=True, help="the prompt file, PEFT adapter dir or training run")
  parser.add_argument("--task", default=None, help="registered task: vocabulary and class labels")
  parser.add_argument("--task_module", default="prompt_tuning_jax.data.tasks", help="module registering --task")
  parser.add_argument("--vocabulary", default=None, help="SentencePiece model file, or 'synthetic'")
  parser.add_argument("--labels", default=None, help="comma-separated class labels (default: the task's)")
  parser.add_argument("--top_k", type=int, default=5, help="nearest tokens per prompt row")
  parser.add_argument("--output_png", default=None, help="write the similarity heatmap here")
  return parser.parse_args(argv)


def _vocabulary_and_labels(args: argparse.Namespace) -> tuple[seqio.Vocabulary, list[str]]:
  labels = [label for label in (args.labels or "").split(",") if label]
  if args.task is not None:
    vocabulary = runs.task_vocabulary(args.task, args.task_module)
    if not labels:
      labels = tasks.get_class_labels(args.task) or []
    return vocabulary, labels
  if args.vocabulary is None:
    raise ValueError("pass --task=NAME or --vocabulary=SPM_FILE (or 'synthetic') to read the tokens")
  if args.vocabulary == "synthetic":
    return vocab.synthetic_vocabulary(), labels
  vocab.check_sentencepiece_file(args.vocabulary)
  return seqio.SentencePieceVocabulary(args.vocabulary), labels


def interpret(args: argparse.Namespace) -> dict:
  """Prints the table and the two observations; writes the PNG; returns the numbers."""
  if args.top_k < 1:
    raise ValueError(f"--top_k must be at least 1, got {args.top_k}")
  vocabulary, labels = _vocabulary_and_labels(args)
  params, _ = checkpoint_io.load_params(args.checkpoint)
  embedding = np.asarray(params["token_embedder"]["embedding"])
  prompt = load_prompt_source(args.prompt, embedding.shape[1])
  # Rows past the vocabulary pad the table to a multiple of 128; they are no token's, so no neighbour.
  embedding = embedding[:min(vocabulary.vocab_size, embedding.shape[0])]
  ids, sims = nearest_neighbors.nearest_tokens(prompt, embedding, args.top_k)
  print(f"prompt {args.prompt}: {prompt.shape[0]} rows x {prompt.shape[1]}; nearest {args.top_k} of "
        f"{embedding.shape[0]} tokens by cosine similarity")
  print("\n".join(nearest_neighbors.describe_prompt(prompt, embedding, vocabulary, args.top_k)))
  shared_rows, shared = nearest_neighbors.shared_nearest_neighbors(ids)
  print(f"\n{shared_rows} of {prompt.shape[0]} rows share their nearest token with another row"
        + (": " + ", ".join(f"{vocabulary.decode([t])!r} rows {rows}" for t, rows in shared.items())
           if shared else ""))
  found = nearest_neighbors.label_neighbors(ids, vocabulary, labels) if labels else {}
  if labels:
    with_label = sorted({row for rows in found.values() for row in rows})
    print(f"{len(with_label)} of {prompt.shape[0]} rows have a class label among their {args.top_k} nearest "
          "tokens: " + ", ".join(f"{label!r} in {len(rows)} rows" for label, rows in found.items()))
  if args.output_png:
    print(f"wrote {nearest_neighbors.plot_similarities(args.output_png, ids, sims, vocabulary)}")
  return {"rows": int(prompt.shape[0]), "shared_nearest_rows": shared_rows,
          "label_rows": {label: rows for label, rows in found.items()}}


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  with cli.errors_as_one_line("interpret"):
    interpret(args)


if __name__ == "__main__":
  main()
