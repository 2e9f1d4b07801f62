"""`synthetic_seq2seq`: copy, reverse, sort and addition tasks, generated from a seed.

Tokens are stored as space-separated ids (read back by the identity tokenizer), so these
tasks go through the same text pipeline as real data. Ids 0-2 are pad/BOS/EOS and 3 is
reserved for unknown, so symbols are ids 4..vocab_size-1; addition uses digits 4..13 and
'+' = 14. Each source sequence belongs to exactly one split, chosen by a CRC of its
tokens, so train, validation and test are disjoint by construction.

`ArrayRecordBuilder`, the base of all three project builders (ArrayRecord by default), lives
here because this module imports no other project module: the others import it without a cycle.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import zlib

import numpy as np
import tensorflow_datasets as tfds

FIRST_SYMBOL = 4
DIGIT_0, PLUS = 4, 14
SPLITS = ("train", "validation", "test")
_BUCKETS = 20  # test: bucket 0, validation: bucket 1, train: the rest
# What every dataset here is written and read as (random access, no TensorFlow).
FILE_FORMAT = tfds.core.FileFormat.ARRAY_RECORD


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  task: str = "copy"
  vocab_size: int = 32
  min_length: int = 4
  max_length: int = 16
  train_examples: int = 10_000
  eval_examples: int = 500
  seed: int = 0


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the project's builders: files default to ArrayRecord, which needs no TensorFlow.

  TFDS's own default (TFRecord) needs TensorFlow to write and read, so without this plain
  `tfds.builder(name).download_and_prepare()` would fail. Passing `file_format=` still wins.
  """

  def __init__(self, *, file_format: str | tfds.core.FileFormat | None = None, **kwargs):
    super().__init__(file_format=file_format or FILE_FORMAT, **kwargs)

  def as_dataset(self, *args, **kwargs):
    # It (and `tfds.load`, which calls it) builds a tf.data.Dataset: without TensorFlow, say
    # in one line what works instead of TFDS's import banner and traceback.
    if importlib.util.find_spec("tensorflow") is None:
      raise ModuleNotFoundError(
          f"{self.name}: as_dataset()/tfds.load() need TensorFlow, which this project does not "
          "use; read the prepared data with builder.as_data_source() or "
          f"tfds.data_source({self.info.full_name!r}, split=..., data_dir=...) instead",
          name="tensorflow")
    return super().as_dataset(*args, **kwargs)


def synthetic_config(task: str, *, vocab_size: int, min_length: int, max_length: int,
                     train_examples: int, eval_examples: int, seed: int) -> SyntheticConfig:
  """A config named by its task and all its parameters.

  The parameters are always in the name: a custom config may not reuse the name of a
  registered one ('copy', ...), which TFDS rejects even when the values are equal.
  """
  params = dict(vocab_size=vocab_size, min_length=min_length, max_length=max_length,
                train_examples=train_examples, eval_examples=eval_examples, seed=seed)
  name = (f"{task}-v{vocab_size}-l{min_length}_{max_length}-n{train_examples}_"
          f"{eval_examples}-s{seed}")
  return SyntheticConfig(name=name, task=task, **params)


def _split_of(source: list[int]) -> str:
  bucket = zlib.crc32(np.asarray(source, np.int32).tobytes()) % _BUCKETS
  return SPLITS[2] if bucket == 0 else SPLITS[1] if bucket == 1 else SPLITS[0]


def _digits(n: int) -> list[int]:
  return [DIGIT_0 + int(c) for c in str(n)]


def draw_pair(task: str, rng: np.random.Generator, cfg: SyntheticConfig
              ) -> tuple[list[int], list[int]]:
  """One (source ids, target ids) example of the task."""
  if task == "addition":
    def operand() -> int:
      digits = int(rng.integers(cfg.min_length, cfg.max_length + 1))
      low = 0 if digits == 1 else 10 ** (digits - 1)
      return int(rng.integers(low, 10 ** digits))
    a, b = operand(), operand()
    return _digits(a) + [PLUS] + _digits(b), _digits(a + b)
  length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
  source = rng.integers(FIRST_SYMBOL, cfg.vocab_size, size=length).tolist()
  if task == "copy":
    return source, list(source)
  if task == "reverse":
    return source, source[::-1]
  if task == "sort":
    return source, sorted(source)
  raise ValueError(f"unknown synthetic task {task!r}")


class SyntheticSeq2seq(ArrayRecordBuilder):
  """Seeded toy sequence-to-sequence tasks (no download)."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [SyntheticConfig(name=t, task=t) for t in ("copy", "reverse", "sort",
                                                                "addition")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, disable_shuffling=True,
        features=tfds.features.FeaturesDict({"inputs": tfds.features.Text(),
                                             "targets": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    if cfg.task == "addition" and cfg.vocab_size <= PLUS:
      raise ValueError(f"synthetic addition needs vocab_size > {PLUS}, got {cfg.vocab_size}")
    if cfg.vocab_size <= FIRST_SYMBOL:
      raise ValueError(f"synthetic vocab_size={cfg.vocab_size} leaves no symbols (ids 0-3 "
                       "are reserved)")
    counts = {"train": cfg.train_examples, "validation": cfg.eval_examples,
              "test": cfg.eval_examples}
    return {split: self._generate_examples(split, n) for split, n in counts.items()}

  def _generate_examples(self, split: str, count: int):
    cfg = self.builder_config
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    # A bound instead of a hang when the task's sequence space is too small for a split.
    budget = 200 * count + 10_000
    made = 0
    for _ in range(budget):
      source, target = draw_pair(cfg.task, rng, cfg)
      if _split_of(source) != split:
        continue
      yield made, {"inputs": " ".join(map(str, source)),
                   "targets": " ".join(map(str, target))}
      made += 1
      if made == count:
        return
    raise ValueError(f"synthetic_seq2seq/{cfg.name}: drew only {made} of {count} {split} "
                     f"examples in {budget} tries; raise vocab_size or the lengths")
