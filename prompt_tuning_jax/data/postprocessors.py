"""Postprocessors: decoded model text (or a target and its example) -> what the task's metrics compare.

seqio calls `postprocess_fn(text, example=example, is_target=...)` on each prediction and each target;
`example` is the task-level example as numpy values (strings as bytes).
"""

from collections.abc import Mapping, Sequence
from typing import Any


def as_text(value: str | bytes) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def text(string: str | bytes, example: Mapping[str, Any] | None = None, is_target: bool = False) -> str:
  """Plain text, surrounding whitespace removed."""
  del example, is_target
  return as_text(string).strip()


def string_label_to_class_id(string: str | bytes, label_classes: Sequence[str],
                             example: Mapping[str, Any] | None = None, is_target: bool = False) -> int:
  """The index of the label in `label_classes`, -1 for anything else (an invalid prediction)."""
  del example, is_target
  label = as_text(string).strip()
  return list(label_classes).index(label) if label in label_classes else -1


def multirc(string: str | bytes, example: Mapping[str, Any] | None = None,
            is_target: bool = False) -> dict[str, Any]:
  """{"value": 0/1/-1}; targets also carry the question they answer, which the metrics group by."""
  result: dict[str, Any] = {"value": string_label_to_class_id(string, ("False", "True"))}
  if is_target:
    result["group"] = (int(example["idx/paragraph"]), int(example["idx/question"]))
  return result


def record(string: str | bytes, example: Mapping[str, Any] | None = None,
           is_target: bool = False) -> dict[str, Any]:
  """Predictions: {"value": answer}; targets: {"value": every gold answer, "group": the query's ids}."""
  if not is_target:
    return {"value": as_text(string).strip()}
  return {
      "value": [as_text(a) for a in example["answers"]],
      "group": (int(example["idx/passage"]), int(example["idx/query"])),
  }
