"""Attention-map pictures: the probe file's tokens, the sweep's attention_maps.png and
translate --attention_map, on a tiny run trained here (1 step, probe saved at 0 and 1)."""

import functools
import io
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

import train_fixtures as fx
from transformer import attention_maps, commands, evaluation, train
from transformer import run as run_lib
from transformer.config import TransformerConfig
from transformer.data.tokenizers import CharTokenizer, IdentityTokenizer
from transformer.model import Transformer

pytestmark = pytest.mark.slow  # end to end: trains a tiny run, draws from it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(fx.loop_config(str(tmp_path_factory.mktemp("tfds")),
                                          num_train_steps=1, eval_every_steps=1,
                                          checkpoint_every_steps=1), path)
  return path


@pytest.fixture(scope="module")
def run(workdir):
  return run_lib.load(workdir)


def _png_size(path):
  """(width, height) from the PNG header; fails on anything else."""
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
  return struct.unpack(">II", head[16:24])


def _tick_labels(ax):
  return ([t.get_text() for t in ax.get_yticklabels()],
          [t.get_text() for t in ax.get_xticklabels()])


def test_token_labels_and_thinned_ticks():
  assert attention_maps.token_labels(IdentityTokenizer(32), [1, 5, 17, 2, 0]) == [
      "<s>", "5", "17", "</s>", "<pad>"]
  assert attention_maps.token_labels(CharTokenizer("ab "), [5, 4, 2]) == ["a", "' '", "</s>"]
  labels = [str(i) for i in range(40)]
  assert attention_maps.ticks(labels) == (list(range(40)), labels)
  positions, shown = attention_maps.ticks([str(i) for i in range(100)])
  assert positions == list(range(0, 100, 3)) and shown == [str(p) for p in positions]


def test_probe_file_holds_the_tokens_of_its_crops(workdir, run):
  first = train._eval_batches(run, run.data.eval_split)[0]
  with np.load(os.path.join(workdir, attention_maps.PROBE_FILE)) as probe:
    files = {k: probe[k] for k in probe.files}
  source, target = files.pop("tokens/source").tolist(), files.pop("tokens/target").tolist()
  ids = first["inputs"][0][first["inputs"][0] != 0]
  assert source == [str(i) for i in ids[:-1]] + ["</s>"]
  assert target == source  # the copy task
  assert sorted(files) == ["decoder_0/cross_attention", "decoder_0/self_attention",
                           "encoder_0/self_attention"]
  assert files["encoder_0/self_attention"].shape[1:] == (len(source), len(source))
  assert files["decoder_0/cross_attention"].shape[1:] == (len(target), len(source))
  assert files["decoder_0/self_attention"].shape[1:] == (len(target), len(target))


def test_probe_pictures_label_tokens_or_positions(workdir, tmp_path):
  old = tmp_path / "old_run"  # a probe file of a run older than the tokens
  old.mkdir()
  with np.load(os.path.join(workdir, attention_maps.PROBE_FILE)) as probe:
    np.savez(old / attention_maps.PROBE_FILE,
             **{k: probe[k] for k in probe.files if not k.startswith("tokens/")})
    tokens = probe["tokens/source"].tolist()
  rows = [attention_maps.probe_row(os.path.join(workdir, attention_maps.PROBE_FILE), "new"),
          attention_maps.probe_row(str(old / attention_maps.PROBE_FILE), "old")]
  assert [r.layer for r in rows] == ["encoder_0/self_attention"] * 2
  fig = attention_maps.plot_maps(rows, str(tmp_path / "rows.png"))
  grid = fig.axes[:4]  # 2 rows x 2 heads, then the colour bar
  n = len(tokens)
  assert [_tick_labels(ax) for ax in grid] == [(tokens, tokens)] * 2 + [
      ([str(i) for i in range(n)],) * 2] * 2
  assert grid[1].get_title() == "encoder_0/self_attention, head 1"
  assert grid[0].get_ylabel() == "new\n" + attention_maps.SOURCE   # the run's name, beside it
  assert grid[0].get_xlabel() == attention_maps.SOURCE
  # The sweep's entry point: one row per name, its first run with a probe file.
  records = [{"run_dir": str(tmp_path / "none"), "name": "new"},
             {"run_dir": workdir, "name": "new"}, {"run_dir": str(old), "name": "new"},
             {"run_dir": str(old), "name": "old"}]
  path = attention_maps.plot_probe_maps(records, str(tmp_path))
  assert path == str(tmp_path / "attention_maps.png")
  assert _png_size(path) == _png_size(tmp_path / "rows.png")  # the same two rows
  assert attention_maps.plot_probe_maps(records[:1], str(tmp_path / "none")) is None
  # A rebuild that finds fewer probe files (they are not committed) keeps the picture.
  drawn = (tmp_path / "attention_maps.png").read_bytes()
  fewer = records + [{"run_dir": str(tmp_path / "none"), "name": "lost"}]
  assert attention_maps.plot_probe_maps(fewer, str(tmp_path)) == path
  assert (tmp_path / "attention_maps.png").read_bytes() == drawn
  os.remove(path)  # nothing to keep: the runs that have probes are drawn
  assert attention_maps.plot_probe_maps(fewer, str(tmp_path)) == path
  assert _png_size(path) == _png_size(tmp_path / "rows.png")


def test_translate_draws_each_layers_cross_attention(workdir, run, tmp_path):
  lines = ["5 9 11 4", "7 7 7"]
  picture = tmp_path / "map.png"
  hyps = commands.translate(workdir, beam_size=1, stdin=io.StringIO("\n".join(lines)),
                            stdout=io.StringIO(), attention_map=str(picture))
  width, height = _png_size(picture)
  assert 300 < width < 2000 and 200 < height < 1500 and picture.stat().st_size > 5000
  # The same drawing in-process: its images are the weights of a direct model.apply.
  params, _ = run_lib.restore_params(run, "latest")
  params = evaluation.device_params(run.model, params)
  sources = evaluation.encode_sources(run, lines)
  output = evaluation.translate_ids(run, params, sources, beam_size=1)[0]
  assert run.tokenizer.decode(output.tolist()) == hyps[0]
  fig = attention_maps.plot_translation(run, params, sources[0], output, str(tmp_path / "b.png"))
  target = np.append(output, 2)[None]
  # Segments of ones: the decoder attends to every token it emitted (as cached decoding).
  _, state = jax.jit(functools.partial(run.model.apply, mutable=["intermediates"]))(
      {"params": params}, sources[0][None], target, targets_segment_ids=np.ones_like(target))
  want_HTS = np.asarray(
      state["intermediates"]["decoder"]["decoder_0"]["cross_attention"]["attention_weights"][0][0])
  assert want_HTS.shape == (2, target.shape[1], len(sources[0]))
  np.testing.assert_allclose(want_HTS.sum(-1), 1.0, rtol=1e-5)
  grid = fig.axes[:2]  # 1 layer x 2 heads, then the colour bar
  for h, ax in enumerate(grid):
    np.testing.assert_allclose(ax.images[0].get_array(), want_HTS[h], atol=1e-6)
    assert ax.get_title() == f"decoder_0/cross_attention, head {h}"
  queries = [{0: "<pad>", 1: "<s>", 2: "</s>"}.get(i, str(i)) for i in target[0].tolist()]
  assert _tick_labels(grid[0]) == (attention_maps.ticks(queries)[1],
                                   ["5", "9", "11", "4", "</s>"])
  assert grid[0].get_ylabel() == attention_maps.TARGET


def test_attention_map_errors(tmp_path):
  def message(path):  # checked first: the workdir does not even exist
    with pytest.raises(commands.UsageError) as e:
      commands.translate(str(tmp_path / "no_run"), attention_map=path, stdin=io.StringIO("4"))
    return str(e.value)

  assert message("map.jpg") == "--attention_map='map.jpg' must name a .png file"
  missing = tmp_path / "nope" / "map.png"
  assert message(str(missing)) == (
      f"--attention_map={str(missing)!r}: directory {str(missing.parent)!r} does not exist")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.translate", f"--workdir={tmp_path}",
       "--attention_map=map.svg"], input="4\n", env={**os.environ, "JAX_PLATFORMS": "cpu"},
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and result.stdout == ""
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --attention_map='map.svg' must name a .png file")
  lm = Transformer(TransformerConfig.tiny(vocab_size=32, num_encoder_layers=0))
  with pytest.raises(ValueError, match="^a decoder-only model has no cross-attention to draw$"):
    attention_maps.cross_attention(lm, None, np.array([5, 2]), np.array([5, 2]))
