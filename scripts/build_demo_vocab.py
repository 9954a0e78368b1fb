"""Trains the synthetic tasks' SentencePiece model, deterministically, from generated examples.

  python scripts/build_demo_vocab.py [--output prompt_tuning_jax/data/assets/synthetic_spm.model]

T5's id layout (pad 0, eos 1, unk 2, no bos). Every word the synthetic tasks use -- letters, digits, label
words and task names -- must come out as a single piece; the script checks that before writing.
"""

import argparse
import io
import os
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from prompt_tuning_jax.data import synthetic, vocab

EXAMPLES_PER_TASK = 2_000
VOCAB_SIZE = 256  # an upper bound: the corpus has fewer distinct pieces, and hard_vocab_limit is off


def corpus() -> list[str]:
  """Prefixed inputs and targets of every synthetic task's training examples, in a fixed order.

  A line of every required word, repeated, makes words the examples rarely or never show (e.g. counts
  "0", "9" under other length settings) single pieces too.
  """
  lines = [" ".join(words())] * 100
  for task in synthetic.TARGET_FNS:
    examples = synthetic.generate_examples(task, "train", EXAMPLES_PER_TASK, seed=0)
    for inputs, targets in zip(examples["inputs"], examples["targets"], strict=True):
      lines += [f"{task}: {inputs}", targets]
  return lines


def words() -> list[str]:
  """Every word that must be one piece."""
  return sorted(set(synthetic.ALPHABET) | set(synthetic.MAJORITY_LABELS) | set(synthetic.TARGET_FNS)
                | {str(n) for n in range(10)})


def train(lines: list[str]) -> bytes:
  model = io.BytesIO()
  # The generated text is plain ASCII, so NFKC's 240 kB table is dead weight; a one-rule table (tab ->
  # space) keeps the file small without the "empty charsmap" log line an identity normalizer prints.
  with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as rules:
    rules.write("9\t20\n")
  # BPE: unigram pruning split rare whole words (e.g. "tie") into characters.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=VOCAB_SIZE,
      hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
      normalization_rule_tsv=rules.name,
      # One thread, no sampling and no shuffling make the model a function of `lines` alone.
      num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2)
  os.remove(rules.name)
  # The trainer records its arguments in the model; drop the temporary file name so reruns are identical.
  proto = sentencepiece_model_pb2.ModelProto.FromString(model.getvalue())
  proto.normalizer_spec.ClearField("normalization_rule_tsv")
  return proto.SerializeToString()


def check(model: bytes) -> None:
  processor = spm.SentencePieceProcessor(model_proto=model)
  for word in words():
    pieces = processor.encode(word, out_type=str)
    if len(pieces) != 1:
      raise SystemExit(f"word {word!r} encodes to {pieces}, expected one piece; raise VOCAB_SIZE")
  ids = (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id())
  if ids != (0, 1, 2, -1):
    raise SystemExit(f"(pad, eos, unk, bos) ids are {ids}, expected (0, 1, 2, -1)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output", default=vocab.SYNTHETIC_SPM_PATH)
  args = parser.parse_args()
  model = train(corpus())
  check(model)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "wb") as f:
    f.write(model)
  size = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
  print(f"wrote {args.output}: {size} pieces, {len(model)} bytes")


if __name__ == "__main__":
  main()
