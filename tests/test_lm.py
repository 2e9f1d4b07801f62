"""The character-level language-model recipe end to end on a tiny corpus made here: the
shakespeare_char config trains, logs bits per character, `evaluate` reports them, `sample`
continues a prompt through the cached decoder (same seed, same text; greedy windows agree
with full forward passes), the catalog's tiny_shakespeare goes through the same code, and
the recipe runs under the sweep."""

import io
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorflow_datasets.core.download import checksums

from experiments.configs import shakespeare_char
from train_fixtures import set_keys
from transformer import (commands, evaluation, settings, sweep, sweep_grid, sweep_plots,
                         sweep_tables, train)
from transformer import run as run_lib
from transformer.data import DataConfig, sources
from transformer.data import lm_text
from transformer.data.lm_text import split_text

pytestmark = pytest.mark.slow  # trains tiny runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("thou", "art", "the", "king", "and", "I", "shall", "not", "love", "thee", "my", "lord")


def _corpus(path, lines=400, seed=0):
  """Speaker lines and verse of random words: a few thousand characters, 20-odd symbols."""
  rs = np.random.RandomState(seed)
  out = []
  for i in range(lines):
    if i % 5 == 0:
      out.append(("ROMEO:" if rs.rand() < 0.5 else "JULIET:") + "\n")
    out.append(" ".join(rs.choice(WORDS, size=rs.randint(3, 8))) + ".\n")
  path.write_text("".join(out))
  return str(path)


def _config(corpus, data_dir, **overrides):
  config = shakespeare_char.get_config("baby")
  config.num_train_steps = 40
  config.batch_size = 8
  config.eval_every_steps = 20
  config.checkpoint_every_steps = 20
  config.log_every_steps = 10
  config.model.update(d_model=32, num_heads=2, d_ff=64, num_decoder_layers=1, max_len=16)
  config.data.update(path=corpus, data_dir=data_dir, max_target_length=16, lm_chunk_chars=200)
  config.optim.update(learning_rate=1e-2, warmup_steps=5)
  return set_keys(config, overrides)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return _corpus(tmp_path_factory.mktemp("text") / "play.txt")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, corpus, data_dir):
  path = str(tmp_path_factory.mktemp("lm"))
  train.train_and_evaluate(_config(corpus, data_dir), path)
  return path


@pytest.fixture(scope="module")
def run(workdir):
  return run_lib.load(workdir)


def _metrics(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [m for m in map(json.loads, f) if m["split"] == split]


def test_variants_have_nanogpts_shapes_and_a_bad_variant_is_named():
  baby = shakespeare_char.get_config("baby")
  assert (baby.model.num_decoder_layers, baby.model.num_heads, baby.model.d_model,
          baby.data.max_target_length, baby.batch_size, baby.num_train_steps,
          baby.model.dropout_rate, baby.model.num_encoder_layers) == (4, 4, 128, 64, 12, 2000,
                                                                      0.0, 0)
  for variant in shakespeare_char.VARIANTS:
    cfg = shakespeare_char.get_config(variant)
    cfg.data.path = "input.txt"
    settings.resolve(cfg.to_dict())  # every key valid, model and data agree
  with pytest.raises(ValueError, match="unknown shakespeare_char variant 'big'; valid: baby"):
    shakespeare_char.get_config("big")


def test_training_logs_nats_and_bits_per_character_over_the_whole_validation_text(
    workdir, corpus):
  evals = _metrics(workdir, "eval")
  assert [m["step"] for m in evals] == [20, 40]
  text = open(corpus).read()
  _, validation = split_text(text, 0.9, corpus)
  documents = len(lm_text.documents(validation, 200))
  for m in evals:
    assert m["loss"] == m["nll"]  # no label smoothing: the loss is nats per character
    assert m["bits_per_char"] == pytest.approx(m["nll"] / math.log(2), rel=1e-12)
    # Every validation character is scored once, plus one document end per document.
    assert m["tokens"] == len(validation) + documents
  assert evals[-1]["nll"] < evals[0]["nll"] < math.log(len(set(text)))  # it learns


def test_evaluate_prints_nats_and_bits_per_character_of_the_split(workdir):
  out = io.StringIO()
  result = commands.evaluate(workdir, split="validation", stdout=out)
  final = _metrics(workdir, "eval")[-1]
  assert result["nll"] == pytest.approx(final["nll"], rel=1e-5)  # other batches, same sums
  assert result["bits_per_char"] == pytest.approx(final["nll"] / math.log(2), rel=1e-5)
  assert result["tokens"] == final["tokens"]
  text = out.getvalue()
  assert f"{result['nll']:.4f} nats per char, {result['bits_per_char']:.4f} bits per char" in text
  with pytest.raises(commands.UsageError, match="a language model is evaluated on a --split"):
    commands.evaluate(workdir, source="a.txt", reference="b.txt")


def test_sample_same_seed_same_text_and_the_prompt_first(workdir):
  kwargs = dict(prompt="ROMEO:", length=40, temperature=0.8, top_k=200)
  out = io.StringIO()
  first = commands.sample(workdir, seed=3, stdout=out, **kwargs)
  assert len(first) == 40  # one token per character, longer than a 16-token window
  assert out.getvalue() == "ROMEO:" + first + "\n"
  assert commands.sample(workdir, seed=3, stdout=io.StringIO(), **kwargs) == first
  others = {commands.sample(workdir, seed=s, stdout=io.StringIO(), **kwargs) for s in (4, 5)}
  assert first not in others
  # The entry point, in a fresh process, writes the same text.
  cli = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={workdir}",
                        "--prompt=ROMEO:", "--length=40", "--temperature=0.8", "--top_k=200",
                        "--seed=3"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert cli.returncode == 0, cli.stderr[-2000:]
  assert cli.stdout == "ROMEO:" + first + "\n"


def test_greedy_windows_agree_with_full_forward_passes(run):
  """top_k=1 samples the argmax: each window's tokens are what the model, run on the whole
  window without a cache, ranks first (within rounding), including across the window edge."""
  params, _ = run_lib.restore_params(run)
  params = evaluation.device_params(run.model, params)
  prompt = run.tokenizer.encode("JULIET:\n")
  new = evaluation.sample_ids(run, params, prompt, length=20, top_k=1, seed=0)
  window, keep = run.data.max_target_length, run.data.max_target_length // 2
  text = prompt + new

  def check(context, continuation):
    ids = jnp.asarray([context + continuation], jnp.int32)
    logits = np.asarray(run.model.apply({"params": params}, None, ids))[0]
    for t in range(len(context), len(context) + len(continuation)):
      assert logits[t, ids[0, t]] >= logits[t].max() - 1e-4, t

  check(prompt, text[len(prompt):window])  # the first window
  second = text[window - keep:window]      # the next one starts from the last half-window
  check(second, text[window:window + window - keep])


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=0.0), "--temperature=0.0 must be a finite number > 0"),
    (dict(temperature=-1.0), "--temperature=-1.0 must be a finite number > 0"),
    (dict(temperature=float("nan")), "--temperature=nan must be a finite number > 0"),
    (dict(top_k=-1), "--top_k=-1 must be >= 0"),
    (dict(length=0), "--length=0 must be >= 1"),
    (dict(prompt="ROMEO: ¿Zounds§"), "--prompt has characters outside the run's vocabulary: "
                                     "'Z' '§' '¿'"),
])
def test_sample_bad_values_are_named(workdir, kwargs, message):
  with pytest.raises(commands.UsageError, match="^" + message.replace("?", r"\?")):
    commands.sample(workdir, **kwargs)


def test_sample_bad_workdirs_are_named(tmp_path, workdir):
  with pytest.raises(run_lib.RunError, match="holds no training run"):
    commands.sample(str(tmp_path))
  with pytest.raises(run_lib.RunError, match="does not exist"):
    commands.sample(str(tmp_path / "nope"))
  translation = tmp_path / "copy"
  translation.mkdir()
  config = settings.default_config()
  config.data.data_dir = str(tmp_path / "tfds")
  settings.record_config(str(translation), settings.resolved_config(
      *settings.resolve(config.to_dict())))
  with pytest.raises(run_lib.RunError, match="not a language model"):
    commands.sample(str(translation))
  cli = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={workdir}",
                        "--temperature=0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert cli.returncode == 1
  assert cli.stderr.strip().splitlines()[-1].startswith("error: --temperature=0.0 must be")


def test_catalog_tiny_shakespeare_is_read_by_the_same_code(tmp_path, corpus, monkeypatch):
  """The catalog's file, checked by TFDS's download manager against the catalog's record,
  gives the same splits as lm_text over a local copy (no network: the manual-dir copy)."""
  data_dir = tmp_path / "tfds"
  manual = data_dir / "downloads" / "manual" / "tiny_shakespeare"
  manual.mkdir(parents=True)
  (manual / "input.txt").write_text(open(corpus).read())
  catalog = DataConfig(dataset="tiny_shakespeare", tokenizer="char", data_dir=str(data_dir))
  assert catalog.decoder_only
  # The real catalog record: this small file is not its 1,115,394 characters.
  with pytest.raises(ValueError, match="tiny_shakespeare: the file downloaded or found in .*"
                                       "manual/tiny_shakespeare for https://raw.githubusercontent"
                                       r".com/karpathy/.* is not the catalog's \(1115394 bytes, "
                                       "sha256 86c4e6aa9db7c042"):
    sources.text_file(catalog)
  (url,) = sources.catalog_url_infos("tiny_shakespeare")
  info = checksums.compute_url_info(manual / "input.txt")
  info = checksums.UrlInfo(size=info.size, checksum=info.checksum, filename="input.txt")
  monkeypatch.setattr(sources, "catalog_url_infos", lambda name: {url: info})
  other = catalog.replace(data_dir=str(tmp_path / "tfds2"))  # another process cache key
  manual2 = tmp_path / "tfds2" / "downloads" / "manual" / "tiny_shakespeare"
  manual2.mkdir(parents=True)
  (manual2 / "input.txt").write_text(open(corpus).read())
  local = DataConfig(dataset="lm_text", path=corpus, tokenizer="char",
                     data_dir=str(tmp_path / "tfds3"))
  for split in ("train", "validation"):
    assert sources.raw_examples(other, split) == sources.raw_examples(local, split)
  with pytest.raises(ValueError, match="downloads its text and takes no `path`"):
    DataConfig(dataset="tiny_shakespeare", path=corpus)


def test_the_recipe_runs_under_the_sweep(tmp_path, corpus, data_dir):
  base = _config(corpus, data_dir, num_train_steps=10, eval_every_steps=10,
                 checkpoint_every_steps=10)
  points = sweep_grid.plan(base, ["model.attention_scale=inv_sqrt_dk,none"], [0])
  records = sweep.run_sweep(points, str(tmp_path), train_fn=train.train_and_evaluate)
  assert [r["status"] for r in records] == ["finished", "finished"]
  rows = sweep_tables.summarize(records, target_loss=1.0)
  md, _ = sweep_tables.write_tables(rows, records, str(tmp_path), 1.0, "eval_bits_per_char")
  pictures = sweep_plots.plot_sweep(records, rows, str(tmp_path), "eval_bits_per_char")
  assert pictures and all(os.path.getsize(p) > 0 for p in pictures)
  table = open(md).read()
  assert "eval_bits_per_char" in table
  assert "| inv_sqrt_dk | 1/1 |" in table and "| none | 1/1 |" in table


def test_a_language_model_config_is_checked_before_anything_runs(corpus, data_dir):
  config = _config(corpus, data_dir)
  point = sweep_grid.plan(config, ["model.attention_scale=inv_sqrt_dk"], [0])[0]
  with pytest.raises(ValueError, match="^--score_split=validation: decodes translations"):
    sweep.check_score_split(point, "validation")
  config.model.num_encoder_layers = 1
  with pytest.raises(settings.ConfigError, match="is a language-model corpus but "
                                                 "model.num_encoder_layers=1; a language model"):
    settings.resolve(config.to_dict())
