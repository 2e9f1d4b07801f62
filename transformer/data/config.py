"""`DataConfig`: everything the input pipeline needs, validated once at the boundary.

The dataset is a TFDS name: one of the project's builders (`synthetic_seq2seq/<task>`,
`parallel_text`, `lm_text`, `sklearn_digits`) or a catalog set such as
`wmt14_translate/de-en` or, for image classification (`IMAGE_DATASETS`), `mnist`. Builder
options that do not apply to the chosen dataset are ignored, so one experiment config can
switch datasets by changing one value.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from transformer.config import dataclass_from_mapping

SYNTHETIC_TASKS = ("copy", "reverse", "sort", "addition")
# Image classification sets (features 'image' and 'label'; `transformer.data.images`): the
# project's digits and TFDS catalog names. Another catalog set is one more name here.
IMAGE_DATASETS = ("sklearn_digits", "mnist", "fashion_mnist", "cifar10", "cifar100")
# Language-model corpora: `lm_text` over data.path, or a text of the TFDS catalog by name
# (downloaded by `sources.text_file`, then read by lm_text the same way).
LM_DATASETS = ("lm_text", "tiny_shakespeare")
TOKENIZERS = ("auto", "sentencepiece", "byte", "char", "identity")
SPM_MODEL_TYPES = ("unigram", "bpe")
# Where prepared data goes unless the config says otherwise: a user cache, never the
# source tree. TRANSFORMER_DATA_DIR overrides it for a whole machine or cluster.
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "transformer", "tensorflow_datasets")


def _default_split_files() -> dict[str, str]:
  return {"train": "train", "validation": "val", "test": "test"}


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Dataset, tokenizer and batching options (see the module docstring)."""
  dataset: str = "synthetic_seq2seq/copy"  # TFDS name: own builder or catalog
  data_dir: str = ""                 # prepared data + tokenizers; "" = DEFAULT_DATA_DIR
  source_lang: str = "en"            # translation direction: source -> target (paper: en->de)
  target_lang: str = "de"
  # parallel_text: folder holding {stem}.{lang} or {stem}.{lang}.gz; lm_text: the corpus file.
  path: str = ""
  # parallel_text: TFDS split name -> file stem (relative to `path`, or an absolute prefix).
  split_files: Mapping[str, str] = dataclasses.field(default_factory=_default_split_files)
  train_fraction: float = 0.9        # lm_text: leading fraction of the corpus used for train
  lm_chunk_chars: int = 2000         # lm_text: lines are grouped into documents this long
  synthetic_seed: int = 0            # synthetic_seq2seq: generator seed
  synthetic_min_length: int = 4      # tokens (digits per operand for addition)
  synthetic_max_length: int = 16
  synthetic_train_examples: int = 10_000
  synthetic_eval_examples: int = 500  # per evaluation split (validation and test)
  tokenizer: str = "auto"            # auto: identity (synthetic), byte (lm_text), else sentencepiece
  vocab_size: int | None = None      # None: 8000 (sentencepiece), 32 (synthetic); byte is 259
  spm_model_type: str = "unigram"    # or "bpe" (the paper's byte-pair encoding, §5.1)
  spm_byte_fallback: bool = True     # unseen characters become bytes: exact round trips
  spm_max_sentences: int = 1_000_000  # training sentences fed to SentencePiece at most
  max_source_length: int = 128       # tokens incl. EOS; longer training examples are dropped
  max_target_length: int = 128
  max_eval_length: int | None = None  # None: eval rows as long as the longest example
  pack: bool = True                  # pack several training examples per row
  image_crop_padding: int = 0        # images: random crop of the image padded this much a side
  image_flip: bool = False           # images: random horizontal flip (not for digits)
  shuffle: bool = True               # a fresh seeded permutation each epoch (no buffer needed)
  read_threads: int = 2              # Grain threads reading + tokenizing training examples
  read_buffer: int = 64              # examples read ahead
  train_split: str = "train"
  eval_split: str = "validation"
  test_split: str = "test"

  def __post_init__(self):
    data_dir = self.data_dir or os.environ.get("TRANSFORMER_DATA_DIR", DEFAULT_DATA_DIR)
    object.__setattr__(self, "data_dir", os.path.abspath(os.path.expanduser(data_dir)))
    object.__setattr__(self, "split_files", dict(self.split_files))
    problems = []
    if not self.dataset:
      problems.append("dataset must be a TFDS name")
    if self.builder_name == "synthetic_seq2seq" and self.synthetic_task not in SYNTHETIC_TASKS:
      problems.append(f"dataset={self.dataset!r}: synthetic task must be one of {SYNTHETIC_TASKS}")
    if self.builder_name in ("parallel_text", "lm_text") and not self.path:
      problems.append(f"dataset={self.dataset!r} needs `path`")
    if self.decoder_only and self.builder_name != "lm_text" and self.path:
      problems.append(f"dataset={self.dataset!r} downloads its text and takes no `path` (got "
                      f"{self.path!r}); for a local copy use dataset='lm_text' with the path")
    if self.source_lang == self.target_lang and not self.decoder_only:
      problems.append(f"source_lang and target_lang are both {self.source_lang!r}")
    if self.images and self.tokenizer != "auto":
      problems.append(f"dataset={self.dataset!r} holds images: it takes no tokenizer, got "
                      f"tokenizer={self.tokenizer!r}")
    if not isinstance(self.image_crop_padding, int) or self.image_crop_padding < 0:
      problems.append(f"image_crop_padding={self.image_crop_padding!r} must be an integer >= 0")
    if not isinstance(self.image_flip, bool):
      problems.append(f"image_flip={self.image_flip!r} must be True or False")
    if self.tokenizer not in TOKENIZERS:
      problems.append(f"tokenizer={self.tokenizer!r} must be one of {TOKENIZERS}")
    if self.spm_model_type not in SPM_MODEL_TYPES:
      problems.append(f"spm_model_type={self.spm_model_type!r} must be one of {SPM_MODEL_TYPES}")
    if (self.tokenizer_kind == "identity") != (self.builder_name == "synthetic_seq2seq"):
      problems.append(f"tokenizer 'identity' goes with synthetic_seq2seq only "
                      f"(dataset={self.dataset!r}, tokenizer={self.tokenizer!r})")
    if not 0.0 < self.train_fraction < 1.0:
      problems.append(f"train_fraction={self.train_fraction} must lie strictly between 0 and 1")
    positive = ("lm_chunk_chars", "synthetic_min_length", "synthetic_train_examples",
                "synthetic_eval_examples", "spm_max_sentences", "max_source_length",
                "max_target_length", "read_buffer")
    problems += [f"{name}={getattr(self, name)!r} must be a positive integer" for name in positive
                 if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0]
    if not isinstance(self.read_threads, int) or self.read_threads < 0:
      problems.append(f"read_threads={self.read_threads!r} must be an integer >= 0")
    if self.synthetic_max_length < self.synthetic_min_length:
      problems.append(f"synthetic_max_length={self.synthetic_max_length} < "
                      f"synthetic_min_length={self.synthetic_min_length}")
    for name in ("vocab_size", "max_eval_length"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value <= 3):
        problems.append(f"{name}={value!r} must be None or an integer > 3")
    if self.tokenizer_kind == "byte" and self.vocab_size not in (None, 259):
      problems.append(f"the byte tokenizer has 259 ids; vocab_size={self.vocab_size} given")
    if self.builder_name == "parallel_text" and self.train_split not in self.split_files:
      problems.append(f"train_split={self.train_split!r} has no entry in split_files")
    if problems:
      raise ValueError("invalid DataConfig: " + "; ".join(problems))

  @classmethod
  def from_mapping(cls, mapping: Mapping[str, Any]) -> "DataConfig":
    """From a dict or an ml_collections.ConfigDict; unknown keys are an error."""
    return dataclass_from_mapping(cls, mapping, "DataConfig keys")

  def replace(self, **changes: Any) -> "DataConfig":
    return dataclasses.replace(self, **changes)

  @property
  def builder_name(self) -> str:
    """The TFDS builder name, without config or version."""
    return self.dataset.split("/")[0].split(":")[0]

  @property
  def synthetic_task(self) -> str:
    return self.dataset.split("/")[1] if "/" in self.dataset else "copy"

  @property
  def decoder_only(self) -> bool:
    """Language modelling: batches carry only the `targets*` keys."""
    return self.builder_name in LM_DATASETS

  @property
  def images(self) -> bool:
    """Image classification: batches of images and labels (`transformer.data.images`)."""
    return self.builder_name in IMAGE_DATASETS

  @property
  def tokenizer_kind(self) -> str:
    """The tokenizer of text data ('none' for images)."""
    if self.images:
      return "none"
    if self.tokenizer != "auto":
      return self.tokenizer
    if self.builder_name == "synthetic_seq2seq":
      return "identity"
    return "byte" if self.decoder_only else "sentencepiece"

  @property
  def resolved_vocab_size(self) -> int | None:
    """The configured size, or the tokenizer's default (None: set by the data, as 'char')."""
    if self.vocab_size is not None:
      return self.vocab_size
    return {"sentencepiece": 8000, "identity": 32, "byte": 259}.get(self.tokenizer_kind)
