"""From a `DataConfig` to a prepared TFDS dataset, read as random-access ArrayRecord files.

The project's builders and TFDS catalog sets go through the same `tfds.data_source`
call, so the rest of the pipeline never knows which one it reads. Preparation runs under
a file lock: when several processes start at once, one prepares and the others wait.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from transformer.data.config import DataConfig
from transformer.data.lm_text import lm_text_config
from transformer.data.locking import file_lock
from transformer.data.parallel_text import parallel_text_config
from transformer.data.synthetic import FILE_FORMAT, synthetic_config

# Importing the TFDS catalog modules registers their builders (a bare `import
# tensorflow_datasets` without TensorFlow registers none of them).
_CATALOG_MODULES = {
    "wmt14_translate": "tensorflow_datasets.translate.wmt14",
    "wmt15_translate": "tensorflow_datasets.translate.wmt15",
    "wmt16_translate": "tensorflow_datasets.translate.wmt16",
    "wmt17_translate": "tensorflow_datasets.translate.wmt17",
    "wmt18_translate": "tensorflow_datasets.translate.wmt18",
    "wmt19_translate": "tensorflow_datasets.translate.wmt19",
}
OWN_BUILDERS = ("synthetic_seq2seq", "parallel_text", "lm_text")


def _builder_kwargs(cfg: DataConfig) -> tuple[str, dict[str, Any]]:
  """The TFDS name to load and the builder arguments (a config object for own builders)."""
  kwargs: dict[str, Any] = {}  # own builders default to ArrayRecord (`ArrayRecordBuilder`)
  name = cfg.builder_name
  if name == "synthetic_seq2seq":
    kwargs["config"] = synthetic_config(
        cfg.synthetic_task, vocab_size=cfg.resolved_vocab_size, min_length=cfg.synthetic_min_length,
        max_length=cfg.synthetic_max_length, train_examples=cfg.synthetic_train_examples,
        eval_examples=cfg.synthetic_eval_examples, seed=cfg.synthetic_seed)
  elif name == "parallel_text":
    kwargs["config"] = parallel_text_config(cfg.path, cfg.split_files, cfg.source_lang,
                                            cfg.target_lang, cfg.train_split)
  elif name == "lm_text":
    kwargs["config"] = lm_text_config(cfg.path, cfg.train_fraction, cfg.lm_chunk_chars)
  else:  # catalog builders default to TFRecord, which needs TensorFlow
    name = cfg.dataset
    kwargs["file_format"] = FILE_FORMAT
    module = _CATALOG_MODULES.get(cfg.builder_name)
    if module:
      importlib.import_module(module)
  return name, kwargs


def _register_own_builders() -> None:
  # Defining the classes registers them with TFDS; importing here keeps that explicit.
  importlib.import_module("transformer.data.synthetic")
  importlib.import_module("transformer.data.parallel_text")
  importlib.import_module("transformer.data.lm_text")


def builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
  """The (not necessarily prepared) TFDS builder the config names."""
  _register_own_builders()
  name, kwargs = _builder_kwargs(cfg)
  return tfds.builder(name, data_dir=cfg.data_dir, **kwargs)


def dataset_key(cfg: DataConfig) -> str:
  """A file-name-safe key of the prepared data: builder, config (with file hashes), version."""
  return builder(cfg).info.full_name.replace("/", "__")


def data_source(cfg: DataConfig, split: str) -> Sequence[dict[str, Any]]:
  """The split as a random-access sequence of examples, preparing the data if needed."""
  _register_own_builders()
  name, kwargs = _builder_kwargs(cfg)
  lock = os.path.join(cfg.data_dir, ".locks", name.replace("/", "__") + ".lock")
  with file_lock(lock):
    dbuilder = tfds.builder(name, data_dir=cfg.data_dir, **kwargs)
    splits = dict(dbuilder.info.splits)
    if splits and split not in splits:  # catalog data may list none before preparing
      raise ValueError(f"{cfg.dataset}: no split {split!r}; available: {', '.join(splits)}")
    return tfds.data_source(name, split=split, data_dir=cfg.data_dir, builder_kwargs=kwargs)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_texts(cfg: DataConfig, example: dict[str, Any]) -> tuple[str, str]:
  """(source text, target text) of one example; language models have source ''."""
  if cfg.builder_name == "lm_text":
    return "", _text(example["text"])
  if cfg.builder_name == "synthetic_seq2seq":
    return _text(example["inputs"]), _text(example["targets"])
  for lang in (cfg.source_lang, cfg.target_lang):
    if lang not in example:
      raise KeyError(f"{cfg.dataset}: examples have no language {lang!r}; they have "
                     f"{', '.join(sorted(example))}")
  return _text(example[cfg.source_lang]), _text(example[cfg.target_lang])


def raw_examples(cfg: DataConfig, split: str) -> list[tuple[str, str]]:
  """Every (source, target) text of the split, in the order `eval_batches` numbers them."""
  source = data_source(cfg, split)
  return [example_texts(cfg, source[i]) for i in range(len(source))]
