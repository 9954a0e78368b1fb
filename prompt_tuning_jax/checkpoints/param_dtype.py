"""The one rule for turning a stored array into a parameter: floating point only, cast to the model's dtype.

Checkpoints store float32 or bfloat16 (some T5X and Hugging Face releases); the model keeps float32 parameters.
An integer array where a parameter belongs means a wrong file or a wrong key, so it is refused, not cast.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def as_param(array: Any, dtype: Any, path: str, source: str) -> np.ndarray:
  """Returns `array` as a numpy array of `dtype`, refusing non-floating arrays.

  Args:
    array: a stored array (numpy, including ml_dtypes bfloat16).
    dtype: the parameter dtype wanted, e.g. np.float32.
    path: the parameter's '/'-joined name, for the error message.
    source: the file or directory it came from, for the error message.

  Returns:
    `array` cast to `dtype` (no copy when it already has that dtype).
  """
  array = np.asarray(array)
  if not jnp.issubdtype(array.dtype, jnp.floating):
    raise ValueError(f"{source}: parameter {path} is stored as {array.dtype}, expected a floating-point array; "
                     "the file is not a T5 parameter checkpoint or the key points at the wrong array")
  return array.astype(dtype, copy=False)
