"""DataConfig: defaults, validation and from_mapping."""

import os

import ml_collections
import pytest

from transformer.data import DataConfig


def test_defaults_resolve_outside_the_source_tree(monkeypatch):
  monkeypatch.delenv("TRANSFORMER_DATA_DIR", raising=False)
  cfg = DataConfig()
  assert cfg.data_dir == os.path.expanduser("~/.cache/transformer/tensorflow_datasets")
  assert (cfg.tokenizer_kind, cfg.resolved_vocab_size) == ("identity", 32)
  assert DataConfig(dataset="parallel_text", path="x").tokenizer_kind == "sentencepiece"
  assert DataConfig(dataset="parallel_text", path="x").resolved_vocab_size == 8000
  assert DataConfig(dataset="lm_text", path="x").tokenizer_kind == "byte"
  assert DataConfig(dataset="lm_text", path="x").decoder_only
  assert DataConfig(dataset="wmt14_translate/de-en").builder_name == "wmt14_translate"
  monkeypatch.setenv("TRANSFORMER_DATA_DIR", "/data/tfds")
  assert DataConfig().data_dir == "/data/tfds"


def test_from_mapping_accepts_configdict_and_names_unknown_keys():
  cfg = DataConfig.from_mapping(ml_collections.ConfigDict(
      {"dataset": "synthetic_seq2seq/sort", "vocab_size": 20, "split_files": {"train": "a"}}))
  assert (cfg.synthetic_task, cfg.vocab_size, cfg.split_files) == ("sort", 20, {"train": "a"})
  with pytest.raises(ValueError, match="unknown DataConfig keys: max_len, vocab"):
    DataConfig.from_mapping({"vocab": 3, "max_len": 5, "dataset": "lm_text"})


@pytest.mark.parametrize("values, message", [
    (dict(dataset="synthetic_seq2seq/shuffle"), "synthetic task must be one of"),
    (dict(dataset="parallel_text"), "dataset='parallel_text' needs `path`"),
    (dict(dataset="parallel_text", path="p", source_lang="de"), "both 'de'"),
    (dict(tokenizer="words"), "tokenizer='words' must be one of"),
    (dict(dataset="parallel_text", path="p", tokenizer="identity"), "'identity' goes with"),
    (dict(spm_model_type="wordpiece"), "spm_model_type='wordpiece'"),
    (dict(train_fraction=1.0), "train_fraction=1.0 must lie strictly between 0 and 1"),
    (dict(max_source_length=0), "max_source_length=0 must be a positive integer"),
    (dict(synthetic_min_length=5, synthetic_max_length=3), "synthetic_max_length=3 <"),
    (dict(vocab_size=2), "vocab_size=2 must be None or an integer > 3"),
    (dict(dataset="lm_text", path="p", tokenizer="byte", vocab_size=300), "259 ids"),
    (dict(dataset="parallel_text", path="p", split_files={"dev": "d"}), "no entry in split_files"),
])
def test_invalid_values_are_named(values, message):
  with pytest.raises(ValueError, match=message):
    DataConfig(**values)
