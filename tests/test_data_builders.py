"""The project's TFDS builders on tiny local data, the catalog path (mocked), bad input."""

import gzip
import os

import pytest
import tensorflow_datasets as tfds

from transformer.data import DataConfig, data_source, raw_examples
from transformer.data.lm_text import documents, split_text
from transformer.data.synthetic import PLUS, SyntheticConfig, draw_pair


def write(path, text, gz=False):
  data = text.encode("utf-8") if isinstance(text, str) else text
  if gz:
    data = gzip.compress(data)
  with open(path, "wb") as f:
    f.write(data)


def synthetic(tmp, task, **kw):
  values = dict(dataset=f"synthetic_seq2seq/{task}", data_dir=str(tmp),
                synthetic_train_examples=60, synthetic_eval_examples=12,
                synthetic_min_length=2, synthetic_max_length=5)
  return DataConfig(**{**values, **kw})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "addition"])
def test_synthetic_counts_contents_and_disjoint_splits(data_dir, task):
  cfg = synthetic(data_dir, task)
  splits = {s: raw_examples(cfg, s) for s in ("train", "validation", "test")}
  assert {s: len(v) for s, v in splits.items()} == {"train": 60, "validation": 12, "test": 12}
  for source, target in splits["train"]:
    src = [int(t) for t in source.split()]
    tgt = [int(t) for t in target.split()]
    if task == "addition":
      plus = src.index(PLUS)
      number = lambda ids: int("".join(str(i - 4) for i in ids))  # noqa: E731
      assert number(tgt) == number(src[:plus]) + number(src[plus + 1:])
    else:
      assert 2 <= len(src) <= 5 and all(4 <= i < 32 for i in src)
      assert tgt == {"copy": src, "reverse": src[::-1], "sort": sorted(src)}[task]
  sources = {s: {x for x, _ in v} for s, v in splits.items()}
  assert not sources["train"] & sources["test"]
  assert not sources["train"] & sources["validation"]
  assert not sources["validation"] & sources["test"]


def test_synthetic_is_seeded(data_dir, tmp_path):
  a = raw_examples(synthetic(data_dir, "copy"), "train")
  again = raw_examples(synthetic(tmp_path, "copy"), "train")  # generated afresh elsewhere
  other = raw_examples(synthetic(data_dir, "copy", synthetic_seed=1), "train")
  assert a == again
  assert a != other


def test_synthetic_too_small_space_raises_instead_of_hanging(tmp_path):
  cfg = synthetic(tmp_path, "copy", vocab_size=5, synthetic_min_length=1,
                  synthetic_max_length=1, synthetic_eval_examples=3)
  with pytest.raises(ValueError, match="raise vocab_size or the lengths"):
    raw_examples(cfg, "train")


def test_draw_pair_addition_digits():
  import numpy as np
  cfg = SyntheticConfig(name="x", task="addition", min_length=1, max_length=1)
  source, target = draw_pair("addition", np.random.default_rng(0), cfg)
  a, b = source[0] - 4, source[2] - 4
  assert source[1] == PLUS and int("".join(str(t - 4) for t in target)) == a + b


@pytest.fixture()
def parallel_dir(tmp_path):
  folder = tmp_path / "corpus"
  folder.mkdir()
  write(folder / "train.en", "a cat\nthe dog runs\n\nhello  world\r\n")
  write(folder / "train.de.gz", "eine Katze\nder Hund läuft\nleer\nhallo  Welt\n", gz=True)
  write(folder / "val.en", "x y\n\n")
  write(folder / "val.de", "x y z\nnur Ziel\n")
  return folder


def parallel(folder, data_dir, **kw):
  return DataConfig(dataset="parallel_text", path=str(folder), data_dir=str(data_dir),
                    split_files={"train": "train", "validation": "val"}, **kw)


def test_parallel_text_contents_and_empty_line_policy(parallel_dir, tmp_path):
  cfg = parallel(parallel_dir, tmp_path / "d")
  # Training drops the pair with an empty side; validation keeps every line.
  assert raw_examples(cfg, "train") == [("a cat", "eine Katze"), ("the dog runs", "der Hund läuft"),
                                        ("hello  world", "hallo  Welt")]
  assert raw_examples(cfg, "validation") == [("x y", "x y z"), ("", "nur Ziel")]
  reverse = parallel(parallel_dir, tmp_path / "d", source_lang="de", target_lang="en")
  assert raw_examples(reverse, "validation") == [("x y z", "x y"), ("nur Ziel", "")]


def test_parallel_text_edited_files_are_prepared_again(parallel_dir, tmp_path):
  cfg = parallel(parallel_dir, tmp_path / "d")
  assert len(raw_examples(cfg, "validation")) == 2
  write(parallel_dir / "val.en", "x y\n\nthird\n")
  write(parallel_dir / "val.de", "x y z\nnur Ziel\ndritte\n")
  os.utime(parallel_dir / "val.en", ns=(1, 10**18))  # a distinct mtime, even on coarse clocks
  assert raw_examples(parallel(parallel_dir, tmp_path / "d"), "validation")[2] == ("third", "dritte")


@pytest.mark.parametrize("problem, message", [
    ("missing", r"val\.de: no such file"),
    ("empty", r"val\.de: file is empty"),
    ("lengths", r"val\.en has 2 lines but .*val\.de has 3"),
    ("undecodable", r"val\.de:2: not valid UTF-8 \(byte 0xff at column 3\)"),
])
def test_parallel_text_bad_input(parallel_dir, tmp_path, problem, message):
  target = parallel_dir / "val.de"
  if problem == "missing":
    target.unlink()
  elif problem == "empty":
    write(target, "")
  elif problem == "lengths":
    write(target, "a\nb\nc\n")
  else:
    write(target, b"gut\nab\xffc\n")
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    raw_examples(parallel(parallel_dir, tmp_path / "d"), "validation")


def test_lm_text_split_and_documents(tmp_path):
  lines = [f"line {i:02d} " + "x" * (i % 7) + "\n" for i in range(40)]
  corpus = tmp_path / "corpus.txt"
  write(corpus, "".join(lines))
  cfg = DataConfig(dataset="lm_text", path=str(corpus), data_dir=str(tmp_path / "d"),
                   train_fraction=0.9, lm_chunk_chars=50)
  train = [t for _, t in raw_examples(cfg, "train")]
  validation = [t for _, t in raw_examples(cfg, "validation")]
  assert "".join(train) + "".join(validation) == "".join(lines)  # nothing lost, order kept
  cut = len("".join(train))
  assert abs(cut - 0.9 * len("".join(lines))) < max(len(line) for line in lines)
  assert all(t.endswith("\n") for t in train + validation)  # whole lines only
  assert all(len(t) <= 50 for t in train + validation)


def test_lm_text_helpers():
  assert split_text("ab\ncd\nef\n", 0.5, "f") == ("ab\ncd\n", "ef\n")
  assert documents("aaaa\nbb\nc\n", 5) == ["aaaa\n", "bb\nc\n"]
  with pytest.raises(ValueError, match="f: train_fraction=0.99 leaves an empty split"):
    split_text("one line\n", 0.99, "f")


@pytest.mark.parametrize("name", ["wmt14_translate/de-en", "wmt17_translate/de-en"])
def test_catalog_translation_through_mock_data(tmp_path, name):
  # The same calls as a real download (tfds.data_source on an ArrayRecord-prepared set),
  # with TFDS's mock supplying random examples.
  cfg = DataConfig(dataset=name, data_dir=str(tmp_path), source_lang="en", target_lang="de")
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    source = data_source(cfg, "train")
    examples = raw_examples(cfg, "validation")
  assert len(source) == 5 and len(examples) == 5
  first = source[0]
  assert examples[0] == (first["en"], first["de"])  # direction en -> de as configured


def test_default_synthetic_parameters_do_not_collide_with_registered_configs():
  """TFDS rejects a custom config named like a registered one ('copy'), even if equal."""
  from transformer.data.synthetic import SyntheticConfig, SyntheticSeq2seq, synthetic_config
  defaults = {k: getattr(SyntheticConfig, k) for k in
              ("vocab_size", "min_length", "max_length", "train_examples", "eval_examples",
               "seed")}
  registered = {c.name for c in SyntheticSeq2seq.BUILDER_CONFIGS}
  assert synthetic_config("copy", **defaults).name not in registered


def test_plain_tfds_prepares_and_reads_a_registered_config(tmp_path):
  """What a user without this project's DataConfig does: plain TFDS calls, no file_format."""
  import transformer.data.synthetic  # noqa: F401  (registers the builder)
  builder = tfds.builder("synthetic_seq2seq/reverse", data_dir=str(tmp_path))
  builder.download_and_prepare()
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  validation = tfds.data_source("synthetic_seq2seq/reverse", split="validation",
                                data_dir=str(tmp_path))
  assert len(validation) == 500 and len(builder.as_data_source()["train"]) == 10_000
  example = validation[0]
  source, target = example["inputs"].decode().split(), example["targets"].decode().split()
  assert source and target == source[::-1]


def test_plain_tfds_reads_a_custom_config(tmp_path):
  from transformer.data.lm_text import lm_text_config
  corpus = tmp_path / "corpus.txt"
  text = "".join(f"line {i}\n" for i in range(20))
  write(corpus, text)
  builder = tfds.builder("lm_text", config=lm_text_config(str(corpus), 0.5, 1000),
                         data_dir=str(tmp_path / "d"))
  builder.download_and_prepare()
  sources = builder.as_data_source()
  assert "".join(sources[s][0]["text"].decode() for s in ("train", "validation")) == text


@pytest.mark.parametrize("name", ["synthetic_seq2seq/copy", "parallel_text", "lm_text"])
def test_own_builders_default_to_array_record_and_file_format_still_wins(tmp_path, name):
  import transformer.data.sources  # noqa: F401  (registers all three builders)
  assert (tfds.builder(name, data_dir=str(tmp_path)).info.file_format
          == tfds.core.FileFormat.ARRAY_RECORD)
  assert (tfds.builder(name, data_dir=str(tmp_path), file_format="tfrecord").info.file_format
          == tfds.core.FileFormat.TFRECORD)


def test_tf_data_routes_say_in_one_line_what_to_use(tmp_path):
  import importlib.util
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed: as_dataset works")
  cfg = synthetic(tmp_path, "copy")
  raw_examples(cfg, "test")  # prepared through the project's route
  from transformer.data.sources import builder
  with pytest.raises(ModuleNotFoundError, match=r"^synthetic_seq2seq: .*need TensorFlow.*"
                     r"builder\.as_data_source\(\)[^\n]*$"):
    builder(cfg).as_dataset(split="test")


def test_library_noise_filter_keeps_real_warnings():
  import logging

  from transformer.run_records import _LibraryNoise

  def kept(path, level, msg):
    return _LibraryNoise().filter(logging.LogRecord("absl", level, path, 1, msg, None, None))

  tfds_file = "/venv/site-packages/tensorflow_datasets/core/dataset_builder.py"
  assert not kept(tfds_file, logging.WARNING, "Using custom data configuration: %s")
  assert not kept("/venv/site-packages/tensorflow_datasets/core/utils/file_utils.py",
                  logging.WARNING, "Variant folder %s has no %s")
  assert not kept("/venv/site-packages/orbax/checkpoint/checkpoint_manager.py",
                  logging.WARNING, "Given directory is read only=%s")
  assert not kept(tfds_file, logging.INFO, "Generating split %s")
  assert kept(tfds_file, logging.WARNING, "Some other TFDS warning %s")
  assert kept("/work/transformer/data/parallel_text.py", logging.WARNING,
              "parallel_text: dropped %d training pairs")
  assert kept("/work/transformer/train.py", logging.INFO, "Using custom data configuration")
