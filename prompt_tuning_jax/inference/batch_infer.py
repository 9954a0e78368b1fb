"""A batch inference job: inputs from a file or a task split, a bank of prompts, predictions as JSONL.

What `python -m prompt_tuning_jax.infer` runs (gin_configs/runs/prompt_infer.gin binds `infer`'s arguments).

Input files, one example per line:
- JSONL (`.jsonl`/`.json`): `{"inputs": "...", "prompt": "rte"}`; `prompt` (or else `task`) names the bank
  prompt, and any other fields (e.g. `targets`) are copied to the output line.
- TSV (`.tsv`): `inputs<TAB>prompt`, the prompt column optional.
A line without a prompt field uses `default_prompt` (or the bank's only prompt). A line that cannot be read, is
empty, or names a prompt the bank lacks is reported with its line number and skipped; the other lines run. The
output has one JSON line per example that ran: its line number, input, prediction, score (log-likelihood;
with beam search its length-penalized score) and prompt.

With `ensemble` (ENSEMBLE, K bank prompt names) every line is predicted by all K prompts in one batched pass
(K x batch rows) and the output's prediction is their majority vote (`ensemble.majority_vote`: ties go to the
earliest prompt's answer), with each prompt's answer and the vote count beside it; when the lines have
`targets`, the summary holds the paper's Table 3 rows (each prompt, mean, best, ensemble).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow as tf
import tqdm

from prompt_tuning_jax.data import pipeline, postprocessors
from prompt_tuning_jax.inference import ensemble as ensemble_lib
from prompt_tuning_jax.inference.bank import PromptBank, parse_prompt_flags
from prompt_tuning_jax.inference.predictor import Predictor, load_model
from prompt_tuning_jax.model.t5 import Transformer
from prompt_tuning_jax.training import runs

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv"}


@dataclasses.dataclass(frozen=True)
class Example:
  """One input line: its number (1-based), text, prompt name and fields to copy to the output."""

  line: int
  inputs: str
  prompt: str
  extra: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a job did: predictions written, lines skipped (with why), inputs truncated, the output file."""

  predicted: int
  skipped: tuple[str, ...]
  truncated: int
  output_file: str
  table: tuple[str, ...] = ()  # the ensemble's Table 3 rows, when the inputs have targets


def _prompt_of(fields: Mapping[str, Any], default_prompt: str | None, bank: PromptBank) -> str:
  if default_prompt is None and len(bank) == 1:
    default_prompt = bank.names[0]
  name = fields.get("prompt", fields.get("task", default_prompt))
  if name is None:
    raise ValueError(f"no prompt or task field, and the bank holds {len(bank)} prompts "
                     f"({', '.join(bank.names)}); add a prompt field or set DEFAULT_PROMPT")
  if not isinstance(name, str):
    raise ValueError(f"prompt field is {name!r}, not a string")
  bank.index(name)  # unknown names fail here, for this line only
  return name


def _parse_line(text: str, fmt: str) -> dict[str, Any]:
  if fmt == "tsv":
    columns = text.rstrip("\n").split("\t")
    if len(columns) > 2:
      raise ValueError(f"has {len(columns)} tab-separated columns; write inputs<TAB>prompt")
    return {"inputs": columns[0], **({"prompt": columns[1]} if len(columns) == 2 and columns[1] else {})}
  try:
    fields = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"is not JSON ({e.msg} at column {e.colno}); write one JSON object per line") from None
  if not isinstance(fields, dict):
    raise ValueError("is not a JSON object; write {\"inputs\": \"...\"}")
  return fields


def read_input_file(path: str, bank: PromptBank, default_prompt: str | None) -> tuple[list[Example], list[str]]:
  """(examples, skipped-line messages) of a JSONL/TSV input file; see the module docstring for the format."""
  fmt = FORMATS.get(os.path.splitext(path)[1].lower())
  if fmt is None:
    raise ValueError(f"input file {path} must end in {', '.join(FORMATS)} (JSONL or TSV)")
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"input file {path} does not exist")
  examples, skipped = [], []
  with tf.io.gfile.GFile(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        text = raw.decode("utf-8")
        if not text.strip():
          raise ValueError("is empty; give every line an input or delete it")
        fields = _parse_line(text, fmt)
        inputs = fields.get("inputs")
        if not isinstance(inputs, str) or not inputs.strip():
          raise ValueError("has no non-empty \"inputs\" string")
        prompt = _prompt_of(fields, default_prompt, bank)
      except (ValueError, UnicodeDecodeError) as e:
        reason = "is not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
        skipped.append(f"{path}:{number}: {reason}")
        continue
      extra = {k: v for k, v in fields.items() if k not in ("inputs", "prompt", "task")}
      examples.append(Example(number, inputs, prompt, extra))
  return examples, skipped


def task_examples(mixture_or_task_name: str, split: str, bank: PromptBank, default_prompt: str | None,
                  num_examples: int | None = None) -> list[Example]:
  """A registered task's split as examples (their targets kept), all routed to the task's prompt."""
  prompt = _prompt_of({"task": mixture_or_task_name} if mixture_or_task_name in bank.names else {},
                      default_prompt, bank)
  # Effectively untrimmed: the predictor truncates (and counts) at max_input_length.
  ds = pipeline.get_task_dataset(mixture_or_task_name, {"inputs": 1 << 20, "targets": 1 << 20}, split)
  if num_examples is not None:
    ds = ds.take(num_examples)
  return [Example(i, postprocessors.as_text(ex["inputs_pretokenized"]), prompt,
                  {"targets": postprocessors.as_text(ex["targets_pretokenized"])})
          for i, ex in enumerate(ds.as_numpy_iterator(), start=1)]


def _batches(examples: Sequence[Example], size: int) -> Iterator[Sequence[Example]]:
  for start in range(0, len(examples), size):
    yield examples[start:start + size]


def infer(*, model: Transformer, initial_checkpoint_path: str, prompts: Sequence[str], output_file: str,
          vocabulary: Any, input_file: str | None = None, mixture_or_task_name: str | None = None,
          mixture_or_task_module: str | None = None, split: str = "validation", num_examples: int | None = None,
          default_prompt: str | None = None, batch_size: int = 32, max_input_length: int | None = 512,
          max_decode_length: int = 64, method: str = "greedy", num_beams: int = 4, alpha: float = 0.6,
          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
          ensemble: Sequence[str] | None = None, progress: bool = True) -> Summary:
  """Predicts every input with its prompt and writes OUTPUT_FILE (JSONL); returns what it did.

  Args:
    model: MODEL (its prompt factory, if any, is replaced by the bank).
    initial_checkpoint_path: INITIAL_CHECKPOINT_PATH, the frozen model (T5X legacy/orbax, Hugging Face).
    prompts: `--prompt` values: `NAME=PATH` or a directory of prompts (see `bank.parse_prompt_flags`).
    output_file: OUTPUT_FILE, the predictions JSONL (written only after every check passed).
    vocabulary: VOCABULARY, encodes the inputs and decodes the predictions.
    input_file: INPUT_FILE, a JSONL or TSV file; or None to read MIXTURE_OR_TASK_NAME's `split`.
    mixture_or_task_name, mixture_or_task_module, split, num_examples: the task split read without a file.
    default_prompt: DEFAULT_PROMPT, for lines that name none (None: the bank's only prompt).
    batch_size: BATCH_SIZE, rows per jitted call.
    max_input_length: MAX_INPUT_LENGTH, input tokens (EOS included) per example; longer ones are truncated and
      counted.
    max_decode_length, method, num_beams, alpha, temperature, top_k, top_p, seed: decoding (`decoding.decode`).
    ensemble: ENSEMBLE, K >= 1 bank prompt names to majority-vote on every line (see the module docstring), or
      None to route each line to its own prompt.
    progress: show a progress bar on stderr.
  """
  if not prompts:
    raise ValueError("no prompts; pass --prompt NAME=PATH (repeatable) or --prompt DIR")
  if (input_file is None) == (mixture_or_task_name is None):
    raise ValueError("pass exactly one input: --input_file=FILE.jsonl/.tsv or --gin.MIXTURE_OR_TASK_NAME=...")
  if mixture_or_task_name is not None:
    runs.import_task_module(mixture_or_task_module)
  frozen_model, params = load_model(initial_checkpoint_path, model)
  bank = PromptBank.load(parse_prompt_flags(prompts), frozen_model.config.emb_dim)
  if ensemble is not None:
    ensemble = ensemble_lib.check_prompts(ensemble)
    for name in ensemble:
      bank.index(name)
    default_prompt = default_prompt or ensemble[0]  # lines need no prompt field; every member answers them
  if default_prompt is not None:
    bank.index(default_prompt)
  if input_file is not None:
    examples, skipped = read_input_file(input_file, bank, default_prompt)
  else:
    examples, skipped = task_examples(mixture_or_task_name, split, bank, default_prompt, num_examples), []
  rows_per_call = batch_size * (len(ensemble) if ensemble else 1)  # an ensemble batch is one K x batch pass
  predictor = Predictor(frozen_model, params, bank, vocabulary, batch_size=rows_per_call,
                        max_input_length=max_input_length)
  options = dict(max_decode_length=max_decode_length, method=method)
  options.update({"beam": dict(num_beams=num_beams, alpha=alpha),
                  "sample": dict(temperature=temperature, top_k=top_k, top_p=top_p, rng=seed)}.get(method, {}))
  members: list[ensemble_lib.EnsembleResult] = []

  def predict(batch: Sequence[Example]) -> list[dict[str, Any]]:
    if ensemble is None:
      results = predictor.predict([e.inputs for e in batch], [e.prompt for e in batch], **options)
      return [{"prediction": r.prediction, "score": round(r.score, 6), "prompt": r.prompt} for r in results]
    result = ensemble_lib.ensemble_predict(predictor, [e.inputs for e in batch], ensemble, **options)
    members.append(result)
    return [{"prediction": answer, "votes": votes, "prompt": "ensemble",
             "answers": {name: result.per_prompt[k][i] for k, name in enumerate(ensemble)}}
            for i, (answer, votes) in enumerate(zip(result.answers, result.votes, strict=True))]

  batches = list(_batches(examples, batch_size))
  bar = tqdm.tqdm(total=len(examples), unit="ex", file=sys.stderr, disable=not progress, desc="infer")
  # The first batch runs before the output is opened: bad decoding options fail the job before it writes.
  first = predict(batches[0]) if batches else []
  bar.update(len(first))
  if "://" not in output_file:
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
  with tf.io.gfile.GFile(output_file, "w") as out, bar:
    _write(out, batches[0] if batches else [], first)
    for batch in batches[1:]:
      _write(out, batch, predict(batch))
      bar.update(len(batch))
  table: tuple[str, ...] = ()
  if ensemble and examples and all(isinstance(e.extra.get("targets"), str) for e in examples):
    combined = ensemble_lib.concatenate(members)
    metrics = ensemble_lib.ensemble_metrics(combined, [e.extra["targets"] for e in examples])
    table = tuple(ensemble_lib.format_ensemble_table(metrics, ensemble))
  return Summary(len(examples), tuple(skipped), predictor.truncated, output_file, table)


def _write(out: Any, batch: Sequence[Example], results: Sequence[Mapping[str, Any]]) -> None:
  for example, result in zip(batch, results, strict=True):
    out.write(json.dumps({"line": example.line, "input": example.inputs, **result, **example.extra}) + "\n")
