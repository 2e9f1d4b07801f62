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
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
from tensorflow_datasets.core.download.util import DownloadError

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
    "mnist": "tensorflow_datasets.image_classification.mnist",
    "fashion_mnist": "tensorflow_datasets.image_classification.mnist",
    "cifar10": "tensorflow_datasets.image_classification.cifar",
    "cifar100": "tensorflow_datasets.image_classification.cifar",
}
OWN_BUILDERS = ("synthetic_seq2seq", "parallel_text", "lm_text", "sklearn_digits")


def _builder_kwargs(cfg: DataConfig) -> tuple[str, dict[str, Any]]:
  """The TFDS name to load and the builder arguments (a config object for own builders)."""
  kwargs: dict[str, Any] = {}  # own builders default to ArrayRecord (`ArrayRecordBuilder`)
  name = cfg.builder_name
  if name == "synthetic_seq2seq":
    kwargs["config"] = synthetic_config(
        cfg.synthetic_task, vocab_size=cfg.resolved_vocab_size, min_length=cfg.synthetic_min_length,
        max_length=cfg.synthetic_max_length, train_examples=cfg.synthetic_train_examples,
        eval_examples=cfg.synthetic_eval_examples, seed=cfg.synthetic_seed)
  elif name == "sklearn_digits":
    pass  # one fixed dataset, no options
  elif name == "parallel_text" or cfg.decoder_only:
    check_path(cfg)
    try:  # a missing split file: FileNotFoundError naming it, made a config error here
      if name == "parallel_text":
        kwargs["config"] = parallel_text_config(cfg.path, cfg.split_files, cfg.source_lang,
                                                cfg.target_lang, cfg.train_split)
      else:
        name = "lm_text"
        kwargs["config"] = lm_text_config(text_file(cfg), cfg.train_fraction, cfg.lm_chunk_chars)
    except OSError as e:
      raise ValueError(f"data.path={cfg.path!r}: {e}") from None
  else:  # catalog builders default to TFRecord, which needs TensorFlow
    name = cfg.dataset
    kwargs["file_format"] = FILE_FORMAT
    module = _CATALOG_MODULES.get(cfg.builder_name)
    if module:
      importlib.import_module(module)
  return name, kwargs


def text_file(cfg: DataConfig) -> str:
  """The corpus file of a language-model dataset: data.path, or the TFDS catalog's file.

  A catalog text (`tiny_shakespeare`) is fetched once into DATA_DIR/downloads by TFDS's
  download manager, which checks it against the size and sha256 the catalog records; a
  copy put in DATA_DIR/downloads/manual/NAME/, under the file name the catalog records
  (input.txt), is used, once checked, in
  place of a download. lm_text then reads it like any local file. (The catalog's own
  builder reads it through TensorFlow and splits it 90/5/5, not 90/10.)
  """
  if cfg.builder_name == "lm_text":
    return cfg.path
  key = (cfg.builder_name, cfg.data_dir)
  if key not in _TEXT_FILES:  # once per process: TFDS hashes the file at every call
    _TEXT_FILES[key] = _download_text(cfg)
  return _TEXT_FILES[key]


_TEXT_FILES: dict[tuple[str, str], str] = {}


def _download_text(cfg: DataConfig) -> str:
  url_infos = catalog_url_infos(cfg.builder_name)
  downloads = os.path.join(cfg.data_dir, "downloads")
  manual = os.path.join(downloads, "manual", cfg.builder_name)
  manager = tfds.download.DownloadManager(
      download_dir=downloads, manual_dir=manual,
      url_infos=url_infos, dataset_name=cfg.builder_name)
  (url,) = url_infos
  want = url_infos[url]
  try:
    return os.fspath(manager.download(url))
  except NonMatchingChecksumError:
    raise ValueError(f"{cfg.dataset}: the file downloaded or found in {manual} for {url} is not "
                     f"the catalog's ({int(want.size)} bytes, sha256 {want.checksum[:16]}...)"
                     ) from None
  except (OSError, DownloadError) as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{cfg.dataset}: cannot download {url} ({first}); offline, put the file "
                     f"at {os.path.join(manual, want.filename)}") from None


def catalog_url_infos(name: str) -> dict[str, Any]:
  """The URL, size and sha256 of each file a TFDS catalog builder downloads."""
  return dict(tfds.builder_cls(name).url_infos)


def check_path(cfg: DataConfig) -> None:
  """ValueError unless data.path is what the builder reads: a folder, or the corpus file."""
  path = os.path.abspath(os.path.expanduser(cfg.path))
  if cfg.builder_name == "parallel_text" and not os.path.isdir(path):
    what = "is a file" if os.path.exists(path) else "does not exist"
    raise ValueError(f"data.path={cfg.path!r} {what}; parallel_text reads a folder of "
                     f"{{split}}.{{lang}}[.gz] files")
  if cfg.builder_name == "lm_text" and not os.path.isfile(path):
    what = "is a directory" if os.path.isdir(path) else "does not exist"
    raise ValueError(f"data.path={cfg.path!r} {what}; lm_text reads one text file")


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def check_data_dir(data_dir: str) -> None:
  """ValueError when data.data_dir is, or lies under, something that is not a directory."""
  path = _nearest_existing(data_dir)
  if not os.path.isdir(path):
    where = "" if path == data_dir else f": {path} is a file"
    raise ValueError(f"data.data_dir={data_dir!r} is not a directory{where}; give a directory "
                     f"(it need not exist yet)")


def check_preparable(cfg: DataConfig) -> None:
  """ValueError when the dataset is not prepared and data.data_dir cannot be written, so
  that it could not be (a prepared read-only cache is fine: it is only read)."""
  path = _nearest_existing(cfg.data_dir)
  if os.access(path, os.W_OK | os.X_OK) or builder(cfg).is_prepared():
    return
  raise ValueError(f"data.data_dir={cfg.data_dir!r} is read-only ({path} denies writing) and "
                   f"does not hold {cfg.dataset} prepared; prepare it in a writable data_dir "
                   f"first (a prepared read-only data_dir is used as it is)")


def _register_own_builders() -> None:
  # Defining the classes registers them with TFDS; importing here keeps that explicit.
  importlib.import_module("transformer.data.synthetic")
  importlib.import_module("transformer.data.parallel_text")
  importlib.import_module("transformer.data.lm_text")
  importlib.import_module("transformer.data.images")


def builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
  """The (not necessarily prepared) TFDS builder the config names."""
  _register_own_builders()
  check_data_dir(cfg.data_dir)
  name, kwargs = _builder_kwargs(cfg)
  return tfds.builder(name, data_dir=cfg.data_dir, **kwargs)


def dataset_key(cfg: DataConfig) -> str:
  """A file-name-safe key of the prepared data: builder, config (with file hashes), version."""
  return builder(cfg).info.full_name.replace("/", "__")


def data_source(cfg: DataConfig, split: str) -> Sequence[dict[str, Any]]:
  """The split as a random-access sequence of examples, preparing the data if needed."""
  _register_own_builders()
  name, kwargs = _builder_kwargs(cfg)
  check_data_dir(cfg.data_dir)
  # Prepared data is only read, so it needs no lock (and a read-only data_dir works):
  # TFDS writes into a temporary folder and renames it, so it is never seen half-written.
  dbuilder = tfds.builder(name, data_dir=cfg.data_dir, **kwargs)
  if dbuilder.is_prepared():
    return _source(cfg, dbuilder, name, kwargs, split)
  lock = os.path.join(cfg.data_dir, ".locks", name.replace("/", "__") + ".lock")
  with file_lock(lock):  # a fresh builder: another process may have prepared it meanwhile
    return _source(cfg, tfds.builder(name, data_dir=cfg.data_dir, **kwargs), name, kwargs,
                   split)


def _source(cfg: DataConfig, dbuilder: tfds.core.DatasetBuilder, name: str,
            kwargs: dict[str, Any], split: str) -> Sequence[dict[str, Any]]:
  splits = dict(dbuilder.info.splits)
  if splits and split not in splits:  # catalog data may list none before preparing
    raise ValueError(f"{cfg.dataset}: no split {split!r}; available: {', '.join(splits)}")
  return tfds.data_source(name, split=split, data_dir=cfg.data_dir, builder_kwargs=kwargs)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_texts(cfg: DataConfig, example: dict[str, Any]) -> tuple[str, str]:
  """(source text, target text) of one example; language models have source ''."""
  if cfg.decoder_only:
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
