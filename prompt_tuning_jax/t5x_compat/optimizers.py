"""The prompt-only optimizer under t5x: `t5x.optimizers.MultiOptimizer` over one traversal, as the reference does.

gin_configs/t5x/prompt_finetune.gin builds
`MultiOptimizer(((ModelParamTraversal(filter_fn=path_filter(PROMPT_REGEX)), adafactor.Adafactor(...)),))`:
parameters outside PROMPT_REGEX get no optimizer state and keep their values bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


def path_filter(regex: str) -> Callable[[str, Any], bool]:
  """`filter_fn(path, value)` for `flax.traverse_util.ModelParamTraversal`: True where `regex` matches the path.

  The traversal passes paths as '/encoder/prompt/prompt/prompt'; the leading '/' is dropped and the regex must
  match the whole rest, as PROMPT_REGEX does in our trainer (`training.train_state.trainable_mask`).
  """
  try:
    pattern = re.compile(regex)
  except re.error as e:
    raise ValueError(f"PROMPT_REGEX {regex!r} is not a valid regular expression ({e}); fix it") from None
  return lambda path, _: pattern.fullmatch(path.lstrip("/")) is not None
