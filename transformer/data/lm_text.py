"""`lm_text`: a language-modelling TFDS builder over one local text file.

The corpus is split once by a fraction of its characters (tiny Shakespeare: the first 90%
train, the last 10% validation), moved forward to the next line start so that no line is
cut. Each split is stored as documents of whole consecutive lines of at most
`chunk_chars` characters (a longer line is a document of its own); the pipeline cuts
tokenized documents into model-length windows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import tensorflow_datasets as tfds

from transformer.data import text_files
from transformer.data.synthetic import ArrayRecordBuilder


@dataclasses.dataclass
class LmTextConfig(tfds.core.BuilderConfig):
  file: str = ""
  train_fraction: float = 0.9
  chunk_chars: int = 2000


def lm_text_config(path: str, train_fraction: float, chunk_chars: int) -> LmTextConfig:
  """A config named after the file, with a hash of its path, size, mtime and the options."""
  file = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{file}: no such file")
  stat = os.stat(file)
  key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}|{train_fraction}|{chunk_chars}"
  base = re.sub(r"[^a-z0-9_]+", "_", os.path.splitext(os.path.basename(file))[0].lower())
  name = f"{base or 'corpus'}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
  return LmTextConfig(name=name, file=file, train_fraction=train_fraction,
                      chunk_chars=chunk_chars)


def split_text(text: str, fraction: float, source: str) -> tuple[str, str]:
  """(train, validation) text: cut at `fraction` of the characters, then at a line start."""
  cut = int(len(text) * fraction)
  newline = text.find("\n", cut - 1) if cut > 0 else -1
  cut = len(text) if newline < 0 else newline + 1
  train, validation = text[:cut], text[cut:]
  if not train.strip() or not validation.strip():
    raise ValueError(f"{source}: train_fraction={fraction} leaves an empty split "
                     f"({len(text)} characters)")
  return train, validation


def documents(text: str, chunk_chars: int) -> list[str]:
  """Consecutive whole lines (newlines kept), at most chunk_chars each where possible."""
  docs, current = [], ""
  for line in text.splitlines(keepends=True):
    if current and len(current) + len(line) > chunk_chars:
      docs.append(current)
      current = ""
    current += line
  if current:
    docs.append(current)
  return docs


class LmText(ArrayRecordBuilder):
  """A local corpus for language modelling (no download)."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [LmTextConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__, disable_shuffling=True,
                                 features=tfds.features.FeaturesDict(
                                     {"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    if not cfg.file:
      raise ValueError("lm_text needs a file: build its config with lm_text_config()")
    train, validation = split_text(text_files.read_text(cfg.file), cfg.train_fraction, cfg.file)
    return {"train": self._generate_examples(train),
            "validation": self._generate_examples(validation)}

  def _generate_examples(self, text: str):
    for i, doc in enumerate(documents(text, self.builder_config.chunk_chars)):
      yield i, {"text": doc}
