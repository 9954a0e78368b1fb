"""Checkpoint and prompt files on any filesystem `tf.io.gfile` knows: local paths, gs:// buckets, ram://.

t5x reads and writes its model directories through gfile, so a user can point every path at a bucket; these
few functions give the checkpoint readers and writers the same reach without each module repeating them.
"""

from __future__ import annotations

import os

import tensorflow as tf


def is_file(path: str) -> bool:
  """Whether `path` exists and is not a directory (`os.path.isfile`, for any gfile filesystem)."""
  return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def read_bytes(path: str) -> bytes:
  """The whole content of the file `path`."""
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` as the file `path`, creating its directory; readers never see a partial file.

  The bytes go to a temporary name first and are renamed into place: atomic on local disks; on GCS the rename
  is a copy, still completed before the final name exists.
  """
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise
