"""Importing this module registers every task and mixture; it is the gin MIXTURE_OR_TASK_MODULE.

Registration reads nothing: TFDS data, the T5 vocabulary (possibly on gs://) and the synthetic examples
are only touched when a dataset is built.
"""

import difflib

import seqio

from prompt_tuning_jax.data import billsum, superglue, synthetic

# Guard re-registration: seqio raises on duplicate names, e.g. if this module is reloaded.
if superglue.MIXTURE_NAME not in seqio.MixtureRegistry.names():
  superglue.register()
  billsum.register()
  synthetic.register()

_CLASS_LABELS: dict[str, list[str]] = {**superglue.CLASS_LABELS, **synthetic.CLASS_LABELS}


def registered_names() -> list[str]:
  """Every registered task and mixture name, sorted."""
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get_mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
  """The registered task or mixture `name`; an unknown name raises with the closest registered ones."""
  if not isinstance(name, str):
    raise ValueError(f"MIXTURE_OR_TASK_NAME must name a registered task or mixture, got {name!r}; pass e.g. "
                     "--gin.MIXTURE_OR_TASK_NAME=\"'super_glue_rte_v102'\"")
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  close = difflib.get_close_matches(name, registered_names(), n=5, cutoff=0.5)
  hint = f"did you mean {', '.join(close)}?" if close else "none is close"
  raise ValueError(f"unknown task or mixture '{name}' ({hint}); "
                   "list them with `python -m prompt_tuning_jax.data.show_tasks`")


def get_class_labels(task_name: str) -> list[str] | None:
  """The class label strings of a task (a mixture: of its tasks, in order), None if it generates free text."""
  provider = get_mixture_or_task(task_name)
  if isinstance(provider, seqio.Task):
    labels = _CLASS_LABELS.get(task_name)
    return list(labels) if labels else None
  labels: list[str] = []
  for task in provider.tasks:
    labels += [label for label in _CLASS_LABELS.get(task.name, []) if label not in labels]
  return labels or None
