"""Lists the registered tasks and mixtures, or prints a few formatted examples of one.

  python -m prompt_tuning_jax.data.show_tasks                         # every task and mixture
  python -m prompt_tuning_jax.data.show_tasks synthetic_reverse       # 3 validation examples
  python -m prompt_tuning_jax.data.show_tasks super_glue_rte_v102 --split train -n 5 --tfds_data_dir DIR
"""

import argparse
import sys

import seqio
import tensorflow_datasets as tfds

from prompt_tuning_jax.data import pipeline, tasks


def describe(name: str) -> str:
  """One line: the name, what it is, and its class labels if it has any."""
  provider = tasks.get_mixture_or_task(name)
  if isinstance(provider, seqio.Mixture):
    kind = f"mixture of {len(provider.tasks)} tasks"
  else:
    kind = type(provider.source).__name__
  labels = tasks.get_class_labels(name)
  return f"{name:45s} {kind}" + (f"  labels: {', '.join(labels)}" if labels else "")


def show_examples(name: str, split: str, num_examples: int, lengths: dict[str, int]) -> None:
  """Prints the text and token ids of the first examples of a split, unshuffled."""
  ds = pipeline.get_task_dataset(name, lengths, split, shuffle=False)
  for i, ex in enumerate(tfds.as_numpy(ds.take(num_examples))):
    print(f"--- {name} [{split}] example {i}")
    for key in ("inputs", "targets"):
      text = ex.get(f"{key}_pretokenized", b"").decode("utf-8")
      print(f"{key:8s} {text}")
      print(f"{'':8s} {ex[key].tolist()}")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", nargs="?", help="a task or mixture; omit to list them all")
  parser.add_argument("--split", default="validation")
  parser.add_argument("-n", "--num_examples", type=int, default=3)
  parser.add_argument("--inputs_length", type=int, default=512, help="TASK_FEATURE_LENGTHS['inputs']")
  parser.add_argument("--targets_length", type=int, default=128, help="TASK_FEATURE_LENGTHS['targets']")
  parser.add_argument("--tfds_data_dir", help="where TFDS datasets are prepared")
  args = parser.parse_args(argv)
  try:
    if args.tfds_data_dir:
      pipeline.set_tfds_data_dir(args.tfds_data_dir)
    if args.name is None:
      for name in tasks.registered_names():
        print(describe(name))
    else:
      print(describe(args.name))
      show_examples(args.name, args.split, args.num_examples,
                    {"inputs": args.inputs_length, "targets": args.targets_length})
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
