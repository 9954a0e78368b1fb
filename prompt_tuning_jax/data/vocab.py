"""Vocabularies: T5's public SentencePiece model for real tasks, a packaged small one for the synthetic tasks.

Tasks are registered when `prompt_tuning_jax.data.tasks` is imported, usually before gin has finished
binding parameters, so TFDS-backed tasks hold a `DeferredVocabulary`: it asks the gin-configurable
`t5_vocabulary()` for the real vocabulary each time it is used. Nothing is read (no gs:// access) until a
dataset is built or text is decoded. Swap the vocabulary with a gin binding:

  t5_vocabulary.sentencepiece_model_file = "/path/to/spm.model"
  t5_vocabulary.extra_ids = 100
"""

import functools
import math
import os
from collections.abc import Callable, Iterable, Sequence

import gin
import seqio
import tensorflow as tf

T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
T5_EXTRA_IDS = 100
SYNTHETIC_SPM_PATH = os.path.join(os.path.dirname(__file__), "assets", "synthetic_spm.model")


def check_sentencepiece_file(path: str) -> None:
  """Raises if a local SentencePiece model file is missing (gs:// paths are left to the reader)."""
  # Probing a remote path needs the network and credentials; seqio's reader reports those failures.
  if "://" not in path and not os.path.exists(path):
    raise FileNotFoundError(f"SentencePiece model {path} does not exist; set t5_vocabulary."
                            "sentencepiece_model_file (gin) to an existing .model file")


@functools.cache
def check_sentencepiece_model(path: str) -> None:
  """Raises one line if `path` cannot be read (e.g. gs:// without network) or is not a SentencePiece model.

  Reads the file once per process (the result is cached).
  """
  import sentencepiece  # seqio's own dependency

  binding = "--gin.vocab.t5_vocabulary.sentencepiece_model_file=\"'/path/sentencepiece.model'\""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      model = f.read()
  except tf.errors.OpError as e:
    reason = e.message.splitlines()[0]
    if "://" in path:
      raise OSError(f"cannot read the SentencePiece model {path} ({reason}); without access to it, copy it on a "
                    f"machine that has (e.g. gsutil cp {path} .) and pass {binding}") from None
    raise OSError(f"cannot read the SentencePiece model {path} ({reason}); pass a readable file with "
                  f"{binding}") from None
  processor = sentencepiece.SentencePieceProcessor()
  try:
    processor.LoadFromSerializedProto(model)
  except Exception:  # protobuf's DecodeError, RuntimeError: not a model
    raise ValueError(f"{path} is not a SentencePiece model ({len(model)} bytes that do not parse as one); pass "
                     f"the .model file the vocabulary was trained as, with {binding}") from None


@gin.configurable
def t5_vocabulary(sentencepiece_model_file: str = T5_SPM_PATH,
                  extra_ids: int = T5_EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """The vocabulary of the TFDS-backed tasks; T5's public 32k model with 100 sentinels by default.

  Reads nothing: seqio loads (and caches) the model on first use.
  """
  return seqio.SentencePieceVocabulary(sentencepiece_model_file, extra_ids=extra_ids)


def synthetic_vocabulary() -> seqio.SentencePieceVocabulary:
  """The small packaged vocabulary of the synthetic tasks (pad 0, eos 1, unk 2, no bos, no sentinels)."""
  return seqio.SentencePieceVocabulary(SYNTHETIC_SPM_PATH, extra_ids=0)


def synthetic_vocab_size() -> int:
  """Number of ids in `synthetic_vocabulary()` (pad, eos, unk included)."""
  return synthetic_vocabulary().vocab_size


def padded_vocab_size(vocabulary: seqio.Vocabulary, multiple: int = 128) -> int:
  """`vocabulary.vocab_size` rounded up to a multiple, as T5 pads 32100 ids to a 32128-row embedding."""
  return multiple * math.ceil(vocabulary.vocab_size / multiple)


class DeferredVocabulary(seqio.Vocabulary):
  """A seqio vocabulary that resolves the real one from `factory()` at every use, never at construction."""

  def __init__(self, factory: Callable[[], seqio.Vocabulary]):
    self._factory = factory
    super().__init__(extra_ids=0)

  # Called inside tf.data map functions; AutoGraph has nothing to convert in a path lookup.
  @tf.autograph.experimental.do_not_convert
  def resolve(self) -> seqio.Vocabulary:
    """The vocabulary `factory()` gives now (checked here, outside gin, so errors stay one line)."""
    vocabulary = self._factory()
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
      check_sentencepiece_file(vocabulary.sentencepiece_model_file)
      check_sentencepiece_model(vocabulary.sentencepiece_model_file)
    if vocabulary.extra_ids < 0:
      raise ValueError(f"{vocabulary} has {vocabulary.extra_ids} extra ids; expected a count >= 0")
    return vocabulary

  @property
  def bos_id(self) -> int | None:
    return self.resolve().bos_id

  @property
  def eos_id(self) -> int | None:
    return self.resolve().eos_id

  @property
  def unk_id(self) -> int | None:
    return self.resolve().unk_id

  @property
  def pad_id(self) -> int:
    return self.resolve().pad_id

  @property
  def extra_ids(self) -> int:
    return self.resolve().extra_ids

  @property
  def vocab_size(self) -> int:
    return self.resolve().vocab_size

  @property
  def _base_vocab_size(self) -> int:
    return self.resolve()._base_vocab_size

  def encode(self, s: str) -> Sequence[int]:
    return self.resolve().encode(s)

  def decode(self, ids: Iterable[int]) -> str:
    return self.resolve().decode(ids)

  def encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.resolve().encode_tf(s)

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self.resolve().decode_tf(ids)

  # The abstract hooks seqio's base class requires; the public methods above never reach them.
  def _encode(self, s: str) -> Sequence[int]:
    return self.encode(s)

  def _decode(self, ids: Iterable[int]) -> str:
    return self.decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.encode_tf(s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self.decode_tf(ids)

  def __eq__(self, other: object) -> bool:
    if isinstance(other, DeferredVocabulary):
      return self._factory is other._factory
    return NotImplemented

  def __hash__(self) -> int:
    return hash(self._factory)

  def __str__(self) -> str:
    return f"DeferredVocabulary({getattr(self._factory, '__name__', self._factory)})"


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """T5's text-to-text features: both sides end in EOS; `inputs` may be absent (e.g. for scoring)."""
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


# The vocabulary every TFDS-backed task is registered with.
TASK_VOCABULARY = DeferredVocabulary(t5_vocabulary)
