"""Text preprocessors: raw TFDS / synthetic examples -> {"inputs": str, "targets": str} in T5's formats.

T5 casts every SuperGLUE example as text: the benchmark name, then each field as `field: value`, and the
label as its class name, e.g. "rte hypothesis: ... premise: ..." -> "not_entailment". The prompt-tuning
paper's "taskless" variant drops the leading benchmark name so that only the prompt says which task it is.
"""

from collections.abc import Sequence

import seqio
import tensorflow as tf

UNKNOWN_LABEL = "<unk>"  # the target of unlabeled (test-split) examples, whose TFDS label is -1


def _label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """The class name of an int label, or UNKNOWN_LABEL for -1."""
  return tf.cond(tf.equal(label, -1), lambda: tf.constant(UNKNOWN_LABEL),
                 lambda: tf.gather(tf.constant(list(label_names)), label))


def _fields_text(x: dict[str, tf.Tensor], benchmark_name: str, feature_names: Sequence[str]) -> tf.Tensor:
  """ "<benchmark_name> <field1>: <value1> <field2>: <value2> ..." """
  parts = [benchmark_name]
  for key in feature_names:
    parts += [f"{key}:", x[key]]
  return tf.strings.join(parts, separator=" ")


@seqio.map_over_dataset
def glue(x: dict[str, tf.Tensor], benchmark_name: str, label_names: Sequence[str],
         feature_names: Sequence[str]) -> dict[str, tf.Tensor]:
  """A (Super)GLUE classification example as T5 text: fields in `feature_names` order, label by name."""
  return {
      "inputs": _fields_text(x, benchmark_name, feature_names),
      "targets": _label_text(x["label"], label_names),
      "idx": x["idx"],
  }


@seqio.map_over_dataset
def multirc(x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """MultiRC: one example per (paragraph, question, answer) with HTML markup removed.

  The paragraph/question ids are kept because the metrics group answers by question.
  """
  text = _fields_text(x, "multirc", ("question", "answer", "paragraph"))
  text = tf.strings.regex_replace(text, "<br>", " ")
  text = tf.strings.regex_replace(text, "</?b>", "")
  return {
      "inputs": text,
      "targets": _label_text(x["label"], ("False", "True")),
      "idx/paragraph": x["idx"]["paragraph"],
      "idx/question": x["idx"]["question"],
      "idx/answer": x["idx"]["answer"],
  }


def _regex_escape(text: tf.Tensor) -> tf.Tensor:
  """Backslash-escapes RE2 metacharacters so `text` matches itself literally."""
  return tf.strings.regex_replace(text, r"([.^$|?*+()\[\]{}\\])", r"\\\1")


def _mark_word(text: tf.Tensor, word: tf.Tensor, word_index: tf.Tensor, mark: str) -> tf.Tensor:
  """Surrounds `word`, found at whitespace-token position `word_index` of `text`, with `mark`."""
  pattern = tf.strings.join(
      ["^((?:\\S+\\s){", tf.strings.as_string(word_index), "})(", _regex_escape(word), ")"])
  return tf.strings.regex_replace(text, pattern, f"\\1{mark} \\2 {mark}")


@seqio.map_over_dataset
def wsc(x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """WSC as T5 classifies it: the candidate noun in `* *`, the pronoun in `# #`, label False/True.

  "wsc text: # This # is a * test * sentence ." -> "False"
  """
  text = _mark_word(x["text"], x["span1_text"], x["span1_index"], "*")
  # Marking span 1 inserted two tokens ("*" before and after); shift span 2 if it comes later.
  span2_index = x["span2_index"] + 2 * tf.cast(x["span1_index"] < x["span2_index"], x["span2_index"].dtype)
  text = _mark_word(text, x["span2_text"], span2_index, "#")
  return {
      "inputs": tf.strings.join(["wsc text:", text], separator=" "),
      "targets": _label_text(x["label"], ("False", "True")),
      "idx": x["idx"],
  }


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD: one example per gold answer (one "<unk>" example when there is none).

  "record query: A @placeholder is a bird. entities: penguin, potato passage: ..." -> "penguin"
  The full answer list and the (passage, query) ids ride along for the metric, which counts each query once.
  """

  def per_answer(x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    passage = x["passage"]
    # CNN/DailyMail highlights are separated by "\n@highlight\n"; make them sentences.
    passage = tf.strings.regex_replace(passage, "([.?!\"'])\n@highlight\n", "\\1 ")
    passage = tf.strings.regex_replace(passage, "\n@highlight\n", ". ")
    inputs = tf.strings.join([
        "record query:", x["query"], "entities:", tf.strings.reduce_join(x["entities"], separator=", "),
        "passage:", passage
    ], separator=" ")
    answers = x["answers"]
    targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant([UNKNOWN_LABEL]))
    n = tf.size(targets)
    return {
        "inputs": tf.fill([n], inputs),
        "targets": targets,
        "answers": tf.tile(answers[tf.newaxis], [n, 1]),
        "idx/passage": tf.fill([n], x["idx"]["passage"]),
        "idx/query": tf.fill([n], x["idx"]["query"]),
    }

  return dataset.map(per_answer, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


@seqio.map_over_dataset
def remove_first_text_token(x: dict[str, tf.Tensor], key: str = "inputs") -> dict[str, tf.Tensor]:
  """Drops the first whitespace-separated word of `x[key]`: T5's task name, for the taskless variants."""
  x = dict(x)
  x[key] = tf.strings.regex_replace(x[key], "^[^ ]* ", "", replace_global=False)
  return x


@seqio.map_over_dataset
def text_to_text(x: dict[str, tf.Tensor], inputs_key: str, targets_key: str,
                 prefix: str | None = None) -> dict[str, tf.Tensor]:
  """{inputs_key: text, targets_key: target} -> {"inputs": "<prefix> text", "targets": target}."""
  inputs = x[inputs_key] if prefix is None else tf.strings.join([prefix, x[inputs_key]], separator=" ")
  return {"inputs": inputs, "targets": x[targets_key]}


def tokenize_and_append_eos() -> list:
  """The token-level tail every task shares: tokenize (keeping `*_pretokenized` text), cache point, EOS."""
  return [
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim,
  ]
