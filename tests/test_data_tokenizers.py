"""Tokenizers: exact round trips, the id layout, vocabulary caching and concurrent training."""

import multiprocessing
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer.data import DataConfig, build_tokenizer
from transformer.data.tokenizers import ByteTokenizer, CharTokenizer, IdentityTokenizer
from transformer.data.vocabularies import vocabulary_path

WORDS = ("the cat sat on a mat while dogs ran past tall green trees near old houses "
         "every morning children sang songs about rivers mountains and bright stars").split()


def corpus_lines(n, salt=0):
  return [" ".join(WORDS[(i * 7 + j * 3 + salt) % len(WORDS)] for j in range(3 + i % 9))
          for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp("corpus")
  for split, n in (("train", 200), ("val", 20)):
    for lang, salt in (("en", 0), ("de", 5)):
      (folder / f"{split}.{lang}").write_text("\n".join(corpus_lines(n, salt)) + "\n")
  return folder


def spm_config(corpus, data_dir, **kw):
  values = dict(dataset="parallel_text", path=str(corpus), data_dir=str(data_dir),
                split_files={"train": "train", "validation": "val"}, vocab_size=300)
  return DataConfig(**{**values, **kw})


@pytest.fixture(scope="module")
def spm_tokenizer(corpus, tmp_path_factory):
  return build_tokenizer(spm_config(corpus, tmp_path_factory.mktemp("d")))


ROUND_TRIP = ["the cat sat", "  two  spaces ", "\ttab and\nnewline", "émoji 🤖 中文",
              "", " ", "Ünïcödé ß never seen in training"]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_sentencepiece_round_trip_is_exact(spm_tokenizer, text):
  assert spm_tokenizer.decode(spm_tokenizer.encode(text)) == text


def test_sentencepiece_ids_and_specials(spm_tokenizer):
  tok = spm_tokenizer
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (300, 0, 1, 2, 3)
  ids = tok.encode("the cat sat")
  assert all(3 < i < 300 for i in ids)
  # Decoding model output: stops at EOS, skips pad and BOS.
  assert tok.decode([1] + ids + [2] + ids + [0, 0]) == "the cat sat"


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_byte_tokenizer_round_trip_any_text(text):
  tok = ByteTokenizer()
  ids = tok.encode(text)
  assert all(3 <= i < 259 for i in ids)
  assert tok.decode(ids) == text


def test_char_and_identity_tokenizers():
  char = CharTokenizer("hello world")
  assert char.vocab_size == 4 + len(set("hello world"))
  assert char.decode(char.encode("hold")) == "hold"
  assert char.encode("z") == [3]  # unseen character -> unknown
  ident = IdentityTokenizer(32)
  assert ident.encode("5 7 31") == [5, 7, 31]
  assert ident.decode([5, 7, 2, 9]) == "5 7"
  with pytest.raises(ValueError, match="id 32 outside vocab_size=32"):
    ident.encode("5 32")


def test_char_tokenizer_built_from_training_split(tmp_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("abc\nabd\n" * 10 + "xyz\n")
  cfg = DataConfig(dataset="lm_text", path=str(corpus), data_dir=str(tmp_path / "d"),
                   tokenizer="char", train_fraction=0.9)
  tok = build_tokenizer(cfg)
  assert tok.chars == "\nabcd"  # the held-out 'xyz' line is not in the vocabulary


def test_vocabulary_cache_is_keyed_and_reused(corpus, tmp_path):
  cfg = spm_config(corpus, tmp_path)
  first = build_tokenizer(cfg)
  path = vocabulary_path(cfg)
  mtime = os.stat(path).st_mtime_ns
  assert build_tokenizer(cfg).encode("the cat") == first.encode("the cat")
  assert os.stat(path).st_mtime_ns == mtime  # loaded, not trained again
  others = [cfg.replace(vocab_size=320), cfg.replace(spm_model_type="bpe"),
            cfg.replace(source_lang="de", target_lang="en"),
            cfg.replace(split_files={"train": "val", "validation": "val"}, vocab_size=260,
                        spm_byte_fallback=False)]
  paths = {vocabulary_path(c) for c in others}
  assert len(paths) == len(others) and path not in paths
  assert os.path.dirname(path).startswith(str(tmp_path))


def _build_in_process(args):
  corpus, data_dir = args
  tok = build_tokenizer(spm_config(corpus, data_dir))
  return tok.encode("the cat sat on a mat")


def test_concurrent_processes_train_once_and_agree(corpus, tmp_path):
  with multiprocessing.get_context("spawn").Pool(3) as pool:
    results = pool.map(_build_in_process, [(str(corpus), str(tmp_path))] * 3)
  assert results[0] == results[1] == results[2]
  folder = os.path.join(tmp_path, "vocabularies")
  assert sorted(f for f in os.listdir(folder) if not f.endswith(".lock")) == [
      os.path.basename(vocabulary_path(spm_config(corpus, tmp_path)))]  # no temporary files


def test_vocabulary_too_large_for_corpus_is_a_clear_error(corpus, tmp_path):
  cfg = spm_config(corpus, tmp_path, vocab_size=5000, spm_byte_fallback=False)
  with pytest.raises(ValueError, match=r"parallel_text \(train split of .*corpus.*\): cannot "
                     r"train a unigram SentencePiece model with vocab_size=5000: .*Vocabulary "
                     r"size too high \(5000\)\. Please set it to a value <= \d+"):
    build_tokenizer(cfg)
