"""A run carries its vocabulary (copied with its sha256 and the data files' hashes, used by
the tools and by resume), and its metrics.jsonl survives a torn write and kills: no
(step, split) row is ever logged twice."""

import collections
import hashlib
import io
import json
import logging
import os
import shutil

import pytest

import train_fixtures as fx
from transformer import commands, run_records, settings, train
from transformer import run as run_lib
from transformer.data import vocabularies

pytestmark = pytest.mark.slow  # end to end: trains tiny runs

PAIRS = [("a man rides", "ein mann reitet"), ("two dogs play", "zwei hunde spielen"),
         ("a woman reads", "eine frau liest"), ("children run", "kinder laufen")]


def _sha(path):
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _rows(workdir):
  return collections.Counter((r["step"], r["split"]) for r in run_records.read_metrics(workdir))


def _text_config(tmp, **overrides):
  return fx.loop_config(str(tmp / "tfds"), num_train_steps=2, checkpoint_every_steps=2,
                        eval_every_steps=2, attention_diagnostics=False, **{
                            "data.dataset": "parallel_text", "data.path": str(tmp / "text"),
                            "data.vocab_size": 40, "data.spm_byte_fallback": False,
                            "data.max_source_length": 32, "data.max_target_length": 32,
                            **overrides})


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """(tmp, workdir) of a 2-step SentencePiece run on local parallel files."""
  tmp = tmp_path_factory.mktemp("vocab")
  (tmp / "text").mkdir()
  for stem, n in (("train", 40), ("val", 4), ("test", 4)):
    for k, lang in enumerate(("en", "de")):
      (tmp / "text" / f"{stem}.{lang}").write_text(
          "".join(PAIRS[i % 4][k] + "\n" for i in range(n)))
  workdir = str(tmp / "run")
  train.train_and_evaluate(_text_config(tmp), workdir)
  return tmp, workdir


def test_the_vocabulary_and_the_data_hashes_are_recorded(text_run):
  tmp, workdir = text_run
  record = json.load(open(os.path.join(workdir, run_lib.VOCABULARY_RECORD)))
  cfg = run_lib.load(workdir).data
  cached = vocabularies.vocabulary_path(cfg)
  assert record["tokenizer"] == "sentencepiece"
  assert record["file"] == os.path.join("vocabulary", os.path.basename(cached))
  assert record["sha256"] == _sha(os.path.join(workdir, record["file"])) == _sha(cached)
  files = sorted(str(tmp / "text" / f"{s}.{lang}") for s in ("train", "val", "test")
                 for lang in ("en", "de"))
  assert record["data_files"] == {f: _sha(f) for f in files}
  manifest = json.load(open(os.path.join(workdir, "manifest.json")))
  assert manifest["vocab_size"] == run_lib.load(workdir).tokenizer.vocab_size


def _translate(workdir, path):
  out = io.StringIO()
  commands.translate(workdir, input_path=path, beam_size=1, stdout=out)
  return out.getvalue()


def test_tools_use_the_copy_and_resume_refuses_changed_data(text_run, tmp_path, caplog):
  tmp, workdir = text_run
  text = tmp / "text"
  inputs = str(tmp_path / "in.txt")
  open(inputs, "w").write("a man rides\nchildren run\n")
  before = _translate(workdir, inputs)
  scored = commands.evaluate(workdir, source=str(text / "test.en"),
                             reference=str(text / "test.de"), beam_size=1, perplexity=False,
                             stdout=io.StringIO())["hypotheses"]

  shutil.rmtree(tmp / "tfds")  # the data_dir cache is gone: no vocabulary is trained again
  assert _translate(workdir, inputs) == before
  assert not (tmp / "tfds" / "vocabularies").exists()
  train.train_and_evaluate(_text_config(tmp), workdir)  # unchanged data: resumes (finished)

  train_en = text / "train.en"
  old, original = _sha(train_en), train_en.read_text()
  train_en.write_text(original + "a cat sleeps on the mat\n")
  shutil.rmtree(tmp / "tfds")
  assert _translate(workdir, inputs) == before
  assert commands.evaluate(workdir, source=str(text / "test.en"),
                           reference=str(text / "test.de"), beam_size=1, perplexity=False,
                           stdout=io.StringIO())["hypotheses"] == scored
  assert not (tmp / "tfds" / "vocabularies").exists()
  with pytest.raises(settings.ConfigError) as e:
    train.train_and_evaluate(_text_config(tmp), workdir)
  assert str(e.value) == (f"the data of this run changed since it started: {train_en} (sha256 "
                          f"{old[:12]} -> {_sha(train_en)[:12]}); restore it, or train in a "
                          "new --workdir")
  # A split scored from changed data is scored as it is now, and says so.
  train_de = text / "train.de"
  original_de = train_de.read_text()
  train_de.write_text(original_de + "eine Katze schläft auf der Matte\n")  # aligned again
  out = io.StringIO()
  commands.evaluate(workdir, split="test", beam_size=1, perplexity=False, limit=2, stdout=out)
  assert f"the data changed since training: {train_de} (sha256 " in out.getvalue()
  assert f"{train_en} (sha256 {old[:12]}" in out.getvalue()
  train_de.write_text(original_de)

  # A run recorded before runs carried their vocabulary: rebuilt from the data, with a warning.
  train_en.write_text(original)
  old_run = str(tmp_path / "old")
  shutil.copytree(workdir, old_run)
  shutil.rmtree(os.path.join(old_run, "vocabulary"))
  caplog.set_level(logging.WARNING)
  assert run_lib.load(old_run).tokenizer.encode("a man") == run_lib.load(workdir).tokenizer.encode(
      "a man")
  assert "recorded before runs carried their vocabulary" in caplog.text


def test_synthetic_runs_record_fixed_ids(tmp_path):
  cfg = settings.resolve(fx.loop_config(str(tmp_path)))
  record = run_lib.create(fx.loop_config(str(tmp_path)), str(tmp_path / "w")).vocabulary
  assert cfg[1].tokenizer_kind == "identity"
  assert record == {"tokenizer": "identity", "file": None, "sha256": None, "data_files": {}}


def test_a_corrupt_line_before_the_last_is_one_line_naming_it(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl\n{"step": 3, "split": "x"}\n')
  with pytest.raises(run_records.RecordError, match=rf"^{path} line 2: unreadable \(") as e:
    run_records.read_metrics(str(tmp_path))
  assert "\n" not in str(e.value)


def test_torn_lines_and_kills_never_duplicate_rows(tmp_path, caplog):
  """A kill before the first checkpoint (step-0 attention and step-1 rows logged), then one
  after checkpoint 1 (rows up to 2 logged); each leaves a torn last line."""
  config = fx.loop_config(str(tmp_path / "tfds"), num_train_steps=2, eval_every_steps=2,
                          checkpoint_every_steps=1)
  workdir = tmp_path / "run"
  workdir.mkdir()
  metrics = workdir / "metrics.jsonl"
  metrics.write_text('{"step": 0, "split": "attention", "x": 1.0}\n'
                     '{"step": 1, "split": "train", "loss": 3.0}\n{"step": 1, "split": "pe')
  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(config, str(workdir))
  assert f"{metrics}: dropped its last line, torn" in caplog.text
  once = _rows(str(workdir))
  assert set(once.values()) == {1} and (0, "attention") in once and (2, "test") in once
  assert (2, "eval") in once and (2, "attention") in once
  first = run_records.read_metrics(str(workdir))[0]
  assert first["split"] == "attention" and "x" not in first  # logged afresh, not kept

  shutil.rmtree(workdir / "checkpoints" / "2")
  with open(metrics, "a") as f:
    f.write('{"step": 2, "split": "tr')
  caplog.clear()
  caplog.set_level(logging.INFO)
  assert train.train_and_evaluate(config, str(workdir))["step"] == 2
  assert "resumed from the checkpoint at step 1" in caplog.text
  assert f"{metrics}: dropped its last line, torn" in caplog.text
  assert _rows(str(workdir)) == once
