"""The sweep's figures, in the layout of the paper's Figure 3 (PNG, matplotlib without a display).

  length.png  the metric against the prompt length (log scale), a line per initializer (the mean over seeds)
              and the seeds' spread (min to max) as a band; a panel per model
  size.png    with a model-size axis: the metric against the model's parameter count (log scale), (a) a line
              per prompt length (first initializer of the grid), (b) a line per initializer (longest prompt)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prompt_tuning_jax.experiments import results

LENGTH_PLOT = "length.png"
SIZE_PLOT = "size.png"


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  return plt


def _spread(rows: Sequence[Mapping[str, Any]], x_key: str, **match: Any) -> tuple[list, list, list, list]:
  """(x, mean, min, max) over the seeds of the finished rows matching `match`, by ascending x."""
  by_x = {x: values for (x,), values in results.values_by(rows, x_key, **match).items()}
  xs = sorted(by_x)
  return (xs, [float(np.mean(by_x[x])) for x in xs], [min(by_x[x]) for x in xs], [max(by_x[x]) for x in xs])


def _save(fig, path: str) -> str:
  """Writes the figure through a temporary file, so another process of the job never reads half a PNG."""
  tmp = f"{path}.tmp{os.getpid()}.png"
  fig.savefig(tmp, dpi=100)
  os.replace(tmp, path)
  return path


def _label(metric: str) -> str:
  """'validation/<task>/sequence_accuracy' -> 'sequence_accuracy (validation)', short enough for an axis."""
  split, _, name = metric.partition("/")
  return f"{name.rsplit('/', 1)[-1]} ({split})" if name else metric


def _line(ax, xs, mean, low, high, label: str, color: str) -> None:
  ax.plot(xs, mean, "o-", color=color, label=label)
  ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)


def plot_lengths(path: str, rows: Sequence[Mapping[str, Any]], models: Sequence[str], inits: Sequence[str],
                 metric: str) -> str:
  """Writes length.png: metric vs prompt length per initializer, with the seed spread."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
  for ax, model in zip(axes[0], models, strict=True):
    for i, init in enumerate(inits):
      xs, mean, low, high = _spread(rows, "prompt_length", model=model, init=init)
      if xs:
        _line(ax, xs, mean, low, high, init, f"C{i}")
    lengths = sorted({row["prompt_length"] for row in rows if row["model"] == model})
    ax.set(xscale="log", xlabel="prompt length (tokens)", ylabel=_label(metric),
           title=f"{model + ': ' if len(models) > 1 else ''}mean over seeds, band: min-max")
    ax.set_xticks(lengths, [str(length) for length in lengths])
    ax.minorticks_off()
    ax.legend(title="initializer")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return path


def plot_sizes(path: str, rows: Sequence[Mapping[str, Any]], lengths: Sequence[int], inits: Sequence[str],
               metric: str) -> str:
  """Writes size.png: metric vs model parameters, (a) per prompt length, (b) per initializer."""
  plt = _pyplot()
  fig, (by_length, by_init) = plt.subplots(1, 2, figsize=(11, 4))
  for i, length in enumerate(sorted(lengths)):
    xs, mean, low, high = _spread(rows, "total_parameters", prompt_length=length, init=inits[0])
    if xs:
      _line(by_length, xs, mean, low, high, str(length), f"C{i}")
  for i, init in enumerate(inits):
    xs, mean, low, high = _spread(rows, "total_parameters", prompt_length=max(lengths), init=init)
    if xs:
      _line(by_init, xs, mean, low, high, init, f"C{i}")
  by_length.set(xscale="log", xlabel="model parameters", ylabel=_label(metric),
                title=f"(a) prompt length ({inits[0]})")
  by_init.set(xscale="log", xlabel="model parameters", ylabel=_label(metric),
              title=f"(b) initializer (length {max(lengths)})")
  by_length.legend(title="prompt length")
  by_init.legend(title="initializer")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return path
