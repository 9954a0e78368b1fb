"""SuperGLUE v1.0.2 from TFDS as T5-formatted seqio tasks, their taskless variants and mixtures.

Registered names (for each benchmark in BENCHMARKS):
  super_glue_<name>_v102            "rte hypothesis: ... premise: ..." -> "not_entailment" (T5's format)
  taskless_super_glue_<name>_v102   the same without the leading benchmark name (the paper's setup)
  super_glue_v102_proportional, taskless_super_glue_v102_proportional: the eight training tasks mixed in
  proportion to their training-set sizes (AX-b and AX-g are test-only diagnostics, evaluated as RTE).
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import seqio

from prompt_tuning_jax.data import metrics, postprocessors, preprocessors, vocab

TFDS_VERSION = "1.0.2"


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """How one SuperGLUE dataset becomes a task."""
  name: str  # the task-name part, e.g. "wsc_fixed"
  tfds_config: str  # e.g. "wsc.fixed"
  text_preprocessors: tuple[Callable, ...]
  label_names: tuple[str, ...] | None  # None: free-text answers (ReCoRD)
  postprocess_fn: Callable
  metric_fns: tuple[Callable, ...]
  num_train_examples: int  # the mixing rate; 0 = evaluation only
  splits: tuple[str, ...] | None = None  # None: every split TFDS has


def _classification(name: str, feature_names: Sequence[str], label_names: Sequence[str],
                    metric_fns: Sequence[Callable], num_train_examples: int, *, tfds_config: str | None = None,
                    text_name: str | None = None, rekey: dict[str, str] | None = None,
                    splits: tuple[str, ...] | None = None) -> Benchmark:
  """A benchmark in T5's generic format: "<text_name> <field>: <value> ..." -> label name."""
  steps = [functools.partial(seqio.preprocessors.rekey, key_map=rekey)] if rekey else []
  steps.append(functools.partial(preprocessors.glue, benchmark_name=text_name or name,
                                 label_names=tuple(label_names), feature_names=tuple(feature_names)))
  return Benchmark(
      name=name, tfds_config=tfds_config or name, text_preprocessors=tuple(steps),
      label_names=tuple(label_names),
      postprocess_fn=functools.partial(postprocessors.string_label_to_class_id, label_classes=tuple(label_names)),
      metric_fns=tuple(metric_fns), num_train_examples=num_train_examples, splits=splits)


_BOOL = ("False", "True")
_NLI = ("entailment", "not_entailment")
# The diagnostics keep T5's reading: cast as RTE, hypothesis and premise fields.
_AXB_AS_RTE = {"premise": "sentence1", "hypothesis": "sentence2", "label": "label", "idx": "idx"}

# Field order follows T5 (sorted field names unless T5 fixed one); training-set sizes are T5's mixing rates.
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    _classification("boolq", ("passage", "question"), _BOOL, [metrics.accuracy], 9_427),
    _classification("cb", ("hypothesis", "premise"), ("entailment", "contradiction", "neutral"),
                    [metrics.accuracy, metrics.f1_macro(num_classes=3)], 250),
    _classification("copa", ("choice1", "choice2", "premise", "question"), ("choice1", "choice2"),
                    [metrics.accuracy], 400),
    Benchmark(name="multirc", tfds_config="multirc", text_preprocessors=(preprocessors.multirc,),
              label_names=_BOOL, postprocess_fn=postprocessors.multirc,
              metric_fns=(metrics.multirc_f1a, metrics.multirc_exact_match), num_train_examples=27_243),
    Benchmark(name="record", tfds_config="record", text_preprocessors=(preprocessors.record,),
              label_names=None, postprocess_fn=postprocessors.record, metric_fns=(metrics.record_em_f1,),
              num_train_examples=138_854),
    _classification("rte", ("hypothesis", "premise"), _NLI, [metrics.accuracy], 2_490),
    _classification("wic", ("sentence1", "sentence2", "word"), _BOOL, [metrics.accuracy], 5_428),
    Benchmark(name="wsc_fixed", tfds_config="wsc.fixed", text_preprocessors=(preprocessors.wsc,),
              label_names=_BOOL,
              postprocess_fn=functools.partial(postprocessors.string_label_to_class_id, label_classes=_BOOL),
              metric_fns=(metrics.accuracy,), num_train_examples=554),
    _classification("axb", ("hypothesis", "premise"), _NLI, [metrics.labeled_only(metrics.matthews_corrcoef)], 0,
                    text_name="rte", rekey=_AXB_AS_RTE, splits=("test",)),
    _classification("axg", ("hypothesis", "premise"), _NLI, [metrics.labeled_only(metrics.accuracy)], 0,
                    text_name="rte", splits=("test",)),
]}

# The leaderboard names of the eight tasks whose scores make up the SuperGLUE average.
LEADERBOARD_NAMES = {"boolq": "boolq", "cb": "cb", "copa": "copa", "multirc": "multirc", "record": "record",
                     "rte": "rte", "wic": "wic", "wsc_fixed": "wsc"}


def task_name(benchmark: str, *, taskless: bool = False) -> str:
  return f"{'taskless_' if taskless else ''}super_glue_{benchmark}_v102"


def leaderboard_score(metrics_by_task: Mapping[str, Mapping[str, float]]) -> float:
  """The SuperGLUE average from {task name: its metrics}, prefixed or taskless names alike."""
  by_benchmark = {}
  for benchmark, leaderboard_name in LEADERBOARD_NAMES.items():
    for taskless in (False, True):
      name = task_name(benchmark, taskless=taskless)
      if name in metrics_by_task:
        by_benchmark[leaderboard_name] = metrics_by_task[name]
  if len(by_benchmark) < len(LEADERBOARD_NAMES):
    missing = [task_name(b) for b, n in LEADERBOARD_NAMES.items() if n not in by_benchmark]
    raise ValueError(f"SuperGLUE average needs metrics of all eight tasks; missing {missing} "
                     f"(found {sorted(metrics_by_task)})")
  return metrics.super_glue_average(by_benchmark)


MIXTURE_NAME = "super_glue_v102_proportional"
TASKLESS_MIXTURE_NAME = "taskless_super_glue_v102_proportional"

# Task name -> class label strings, for the class-label prompt initializer.
CLASS_LABELS: dict[str, list[str]] = {
    task_name(b.name, taskless=taskless): list(b.label_names)
    for b in BENCHMARKS.values() if b.label_names for taskless in (False, True)
}


def register(vocabulary: seqio.Vocabulary = vocab.TASK_VOCABULARY) -> None:
  """Adds every SuperGLUE task and the two proportional mixtures to seqio's registries."""
  features = vocab.output_features(vocabulary)
  for b in BENCHMARKS.values():
    for taskless in (False, True):
      steps = list(b.text_preprocessors)
      if taskless:
        steps.append(preprocessors.remove_first_text_token)
      seqio.TaskRegistry.add(
          task_name(b.name, taskless=taskless),
          source=seqio.TfdsDataSource(tfds_name=f"super_glue/{b.tfds_config}:{TFDS_VERSION}", splits=b.splits),
          preprocessors=steps + preprocessors.tokenize_and_append_eos(),
          output_features=features,
          postprocess_fn=b.postprocess_fn,
          metric_fns=list(b.metric_fns))
  for mixture, taskless in ((MIXTURE_NAME, False), (TASKLESS_MIXTURE_NAME, True)):
    seqio.MixtureRegistry.add(
        mixture, [(task_name(b.name, taskless=taskless), b.num_train_examples)
                  for b in BENCHMARKS.values() if b.num_train_examples])
