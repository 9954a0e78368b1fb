"""BillSum v3 (US Congressional bills -> summaries) from TFDS as seqio tasks scored by ROUGE and BLEU.

  billsum_v3             "summarize: <bill text>" -> summary (T5's format)
  billsum_v3_no_prefix   "<bill text>" -> summary (only a prompt says what to do)

TFDS has no validation split, so VALIDATION_FRACTION of the training split's tail is held out as one.
"""

import functools

import seqio

from prompt_tuning_jax.data import metrics, postprocessors, preprocessors, vocab

TFDS_NAME = "billsum:3.0.0"
TASK_NAME = "billsum_v3"
NO_PREFIX_TASK_NAME = "billsum_v3_no_prefix"
VALIDATION_FRACTION = 5  # percent of `train`

SPLITS = {
    "train": f"train[:{100 - VALIDATION_FRACTION}%]",
    "validation": f"train[{100 - VALIDATION_FRACTION}%:]",
    "test": "test",
    "ca_test": "ca_test",  # California bills: the out-of-domain test set
}


def register(vocabulary: seqio.Vocabulary = vocab.TASK_VOCABULARY) -> None:
  """Adds both BillSum tasks to seqio's TaskRegistry."""
  for name, prefix in ((TASK_NAME, "summarize:"), (NO_PREFIX_TASK_NAME, None)):
    seqio.TaskRegistry.add(
        name,
        source=seqio.TfdsDataSource(tfds_name=TFDS_NAME, splits=SPLITS),
        preprocessors=[functools.partial(preprocessors.text_to_text, inputs_key="text", targets_key="summary",
                                         prefix=prefix)] + preprocessors.tokenize_and_append_eos(),
        output_features=vocab.output_features(vocabulary),
        postprocess_fn=postprocessors.text,
        metric_fns=[metrics.rouge, metrics.bleu])
