"""`parallel_text`: a TFDS builder over local line-aligned files, one per language per split.

Any user's files work: `{path}/{stem}.{lang}` or `.gz` for each split's stem (Multi30k:
train, val, test_2016_flickr). The config name carries a hash of the files' paths, sizes
and modification times, so edited or different files never reuse stale prepared data.

Empty lines: a training pair with an empty side is dropped and counted (logged); in any
other split every line is kept, so evaluation sets match their references line by line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import tensorflow_datasets as tfds
from absl import logging

from transformer.data import text_files
from transformer.data.synthetic import ArrayRecordBuilder


@dataclasses.dataclass
class ParallelTextConfig(tfds.core.BuilderConfig):
  source_lang: str = "en"
  target_lang: str = "de"
  # split name -> (source file, target file), absolute paths
  files: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
  train_split: str = "train"


def parallel_text_config(path: str, split_files: dict[str, str], source_lang: str,
                         target_lang: str, train_split: str = "train") -> ParallelTextConfig:
  """Resolves the files (FileNotFoundError naming any missing one) and names the config."""
  files = {}
  for split, stem in split_files.items():
    stem = os.path.join(os.path.abspath(os.path.expanduser(path)), stem)
    pair = tuple(text_files.resolve(stem, lang) for lang in (source_lang, target_lang))
    for file in pair:
      if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such file (split {split!r}; expected "
                                f"{os.path.basename(stem)}.{{lang}}[.gz] under {path})")
    files[split] = pair
  fingerprint = hashlib.sha256()
  for split, pair in sorted(files.items()):
    for file in pair:
      stat = os.stat(file)
      fingerprint.update(f"{split}|{file}|{stat.st_size}|{stat.st_mtime_ns};".encode())
  fingerprint.update(train_split.encode())
  base = re.sub(r"[^a-z0-9_]+", "_", os.path.basename(os.path.normpath(path)).lower()) or "files"
  name = f"{base}-{source_lang}-{target_lang}-{fingerprint.hexdigest()[:10]}"
  return ParallelTextConfig(name=name, source_lang=source_lang, target_lang=target_lang,
                            files=files, train_split=train_split)


class ParallelText(ArrayRecordBuilder):
  """Line-aligned local translation files; features match TFDS's WMT sets."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [ParallelTextConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, disable_shuffling=True,
        features=tfds.features.Translation(languages=[cfg.source_lang, cfg.target_lang]))

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    if not cfg.files:
      raise ValueError("parallel_text needs files: build its config with parallel_text_config()")
    return {split: self._generate_examples(split, *pair) for split, pair in cfg.files.items()}

  def _generate_examples(self, split: str, source_file: str, target_file: str):
    cfg = self.builder_config
    dropped = 0
    for number, source, target in text_files.read_parallel(source_file, target_file):
      if split == cfg.train_split and not (source.strip() and target.strip()):
        dropped += 1
        continue
      # Keyed by line number: with shuffling disabled, the split keeps the files' order.
      yield number, {cfg.source_lang: source, cfg.target_lang: target}
    if dropped:
      logging.warning("parallel_text: dropped %d training pairs with an empty side (%s, %s)",
                      dropped, source_file, target_file)
