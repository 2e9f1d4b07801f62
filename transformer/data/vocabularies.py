"""`build_tokenizer`: trains a vocabulary once on the training split and caches it.

Vocabularies live in `{data_dir}/vocabularies/`, keyed by the prepared dataset's full
name (for local files it includes a hash of their paths, sizes and times), the languages,
the tokenizer and its size and options, so a different dataset or size never loads a
wrong model. A file lock makes concurrent starts safe: one process trains and writes
atomically (temporary file + rename), the others wait and then load.

A training run copies the serialized vocabulary (`vocabulary_bytes`) into its workdir and
records the hashes of the local files it and the prepared data come from (`source_files`),
so that its tools rebuild the tokenizer from the copy (`tokenizer_from_bytes`), never from
data that may have changed since.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator

import sentencepiece as spm
from absl import logging

from transformer.data import sources, text_files
from transformer.data.config import DataConfig
from transformer.data.locking import file_lock
from transformer.data.tokenizers import (BOS_ID, EOS_ID, PAD_ID, UNK_ID, ByteTokenizer,
                                         CharTokenizer, IdentityTokenizer,
                                         SentencePieceTokenizer, Tokenizer)


def vocabulary_path(cfg: DataConfig) -> str:
  """Where the config's trained vocabulary is (or will be) cached."""
  options = [cfg.tokenizer_kind, cfg.resolved_vocab_size, cfg.spm_model_type,
             cfg.spm_byte_fallback, cfg.spm_max_sentences, cfg.train_split]
  if not cfg.decoder_only:
    options += [cfg.source_lang, cfg.target_lang]
  digest = hashlib.sha256(json.dumps(options).encode()).hexdigest()[:10]
  key = f"{sources.dataset_key(cfg)}-{cfg.tokenizer_kind}"
  if cfg.tokenizer_kind == "sentencepiece":
    key += f"-{cfg.spm_model_type}{cfg.resolved_vocab_size}"
  extension = ".model" if cfg.tokenizer_kind == "sentencepiece" else ".json"
  return os.path.join(cfg.data_dir, "vocabularies", f"{key}-{digest}{extension}")


def training_texts(cfg: DataConfig) -> Iterator[str]:
  """Source and target texts of the training split (evenly spaced if over the cap)."""
  source = sources.data_source(cfg, cfg.train_split)
  per_example = 1 if cfg.decoder_only else 2
  count = min(len(source), max(1, cfg.spm_max_sentences // per_example))
  for k in range(count):
    src, tgt = sources.example_texts(cfg, source[k * len(source) // count])
    if src:
      yield src
    if tgt:
      yield tgt


def train_sentencepiece(cfg: DataConfig, texts: Iterator[str]) -> bytes:
  """A serialized model; ValueError when the corpus cannot support the vocabulary size."""
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=texts, model_writer=model, vocab_size=cfg.resolved_vocab_size,
        model_type=cfg.spm_model_type, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        unk_id=UNK_ID, character_coverage=1.0, byte_fallback=cfg.spm_byte_fallback,
        # identity normalization + kept whitespace: decode(encode(text)) == text
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        max_sentence_length=1 << 16, num_threads=max(1, min(16, os.cpu_count() or 1)),
        minloglevel=2)
  except RuntimeError as e:
    where = f"{cfg.train_split} split" + (f" of {cfg.path}" if cfg.path else "")
    raise ValueError(f"{cfg.dataset} ({where}): cannot train a "
                     f"{cfg.spm_model_type} SentencePiece model with vocab_size="
                     f"{cfg.resolved_vocab_size}: {str(e).strip()}") from None
  return model.getvalue()


def write_atomically(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file and a rename: never seen half-written."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _train(cfg: DataConfig) -> bytes:
  if cfg.tokenizer_kind == "sentencepiece":
    logging.info("training a SentencePiece vocabulary of %d on %s", cfg.resolved_vocab_size,
                 cfg.dataset)
    return train_sentencepiece(cfg, training_texts(cfg))
  chars = set()
  for text in training_texts(cfg):
    chars.update(text)
  if cfg.vocab_size is not None and len(chars) + 4 != cfg.vocab_size:
    raise ValueError(f"{cfg.dataset}: the char tokenizer has {len(chars) + 4} ids, "
                     f"vocab_size={cfg.vocab_size} given (leave it None)")
  return json.dumps({"chars": "".join(sorted(chars))}).encode()


def _load(cfg: DataConfig, data: bytes) -> Tokenizer:
  if cfg.tokenizer_kind == "sentencepiece":
    return SentencePieceTokenizer(data)
  return CharTokenizer(json.loads(data.decode())["chars"])


def has_vocabulary_file(cfg: DataConfig) -> bool:
  """Whether the tokenizer is built from a trained file (identity and byte ids are fixed)."""
  return cfg.tokenizer_kind not in ("identity", "byte")


def vocabulary_bytes(cfg: DataConfig) -> bytes | None:
  """The serialized vocabulary (trained and cached on first use); None without a file."""
  if not has_vocabulary_file(cfg):
    return None
  path = vocabulary_path(cfg)
  if not os.path.exists(path):
    with file_lock(path + ".lock"):
      if not os.path.exists(path):  # another process may have trained it meanwhile
        write_atomically(path, _train(cfg))
  with open(path, "rb") as f:
    return f.read()


def tokenizer_from_bytes(cfg: DataConfig, data: bytes | None) -> Tokenizer:
  """The config's tokenizer from `vocabulary_bytes` (a run's copy of them)."""
  if cfg.tokenizer_kind == "identity":
    return IdentityTokenizer(cfg.resolved_vocab_size)
  if cfg.tokenizer_kind == "byte":
    return ByteTokenizer()
  return _load(cfg, data)


def build_tokenizer(cfg: DataConfig) -> Tokenizer:
  """The config's tokenizer, training and caching its vocabulary on first use."""
  return tokenizer_from_bytes(cfg, vocabulary_bytes(cfg))


def source_files(cfg: DataConfig) -> list[str]:
  """The local files the prepared data and the vocabulary are built from.

  No files for synthetic data (generated from the config) and TFDS catalog sets (downloaded and
  versioned by TFDS). The paths need not exist: a missing one is a change too.
  """
  if cfg.builder_name == "parallel_text":
    root = os.path.abspath(os.path.expanduser(cfg.path))
    return [text_files.resolve(os.path.join(root, stem), lang)
            for _, stem in sorted(cfg.split_files.items())
            for lang in (cfg.source_lang, cfg.target_lang)]
  if cfg.builder_name == "lm_text":
    return [os.path.abspath(os.path.expanduser(cfg.path))]
  return []
