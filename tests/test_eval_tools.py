"""The average_checkpoints, translate and evaluate tools on a tiny run trained here
(6 steps, checkpoints at 2, 4, 6), their bad-input messages, and bleu_on_split as the
training loop would call it."""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sacrebleu

import train_fixtures as fx
from transformer import averaging, commands, evaluation, parallel, run_records, train
from transformer import run as run_lib

pytestmark = pytest.mark.slow  # end to end: trains a tiny run, runs the tools as commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  path = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(fx.loop_config(data_dir, eval_every_steps=6,
                                          attention_diagnostics=False), path)
  assert run_lib.steps_in(run_lib.checkpoints_dir(path)) == [2, 4, 6]
  return path


@pytest.fixture(scope="module")
def run(workdir):
  return run_lib.load(workdir)


def _tool(name, *args, stdin=""):
  return subprocess.run([sys.executable, "-m", f"experiments.{name}", *args], input=stdin,
                        env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _raw_params(workdir, step):
  """A checkpoint's params read with Orbax directly (not through transformer.run)."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    tree = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, tree["state"]["train"]["params"])


def _digest(directory):
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(directory)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      h.update(path.encode() + open(path, "rb").read() + str(os.stat(path).st_mtime_ns).encode())
  return h.hexdigest()


def test_average_tool_writes_the_mean_and_leaves_checkpoints_alone(workdir, run):
  before = _digest(os.path.join(workdir, "checkpoints"))
  result = _tool("average_checkpoints", f"--workdir={workdir}", "--last=3")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == (f"{workdir}/averaged/6: wrote the average of the params of "
                                   "steps 2, 4, 6; use --checkpoint=averaged")
  assert _digest(os.path.join(workdir, "checkpoints")) == before
  params, described = run_lib.restore_params(run, "averaged")
  assert described == "average of steps 2, 4, 6"
  originals = [_raw_params(workdir, s) for s in (2, 4, 6)]
  expected = jax.tree.map(lambda *x: np.mean(np.stack(x), 0, dtype=np.float64).astype(x[0].dtype),
                          *originals)
  for got, want, first in zip(jax.tree.leaves(params), jax.tree.leaves(expected),
                              jax.tree.leaves(originals[0])):
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(np.asarray(got), first)  # training moved every parameter
  # Same request again: kept. Other steps at the same step: refused without --overwrite.
  again = commands.average(workdir, 3, stdout=io.StringIO())
  assert again["existing"] and again["steps"] == [2, 4, 6]
  with pytest.raises(run_lib.RunError, match="already holds the average of steps 2, 4, 6; "
                     "pass --overwrite"):
    averaging.average_last(workdir, 2)
  with pytest.raises(run_lib.RunError, match=r"--last=4 but .* holds 3 checkpoint\(s\) "
                     r"\(steps 2, 4, 6\)"):
    averaging.average_last(workdir, 4)
  assert _digest(os.path.join(workdir, "checkpoints")) == before
  # Training the same run further resumes from checkpoints/ as if nothing happened.
  assert run_lib.steps_in(run_lib.checkpoints_dir(workdir)) == [2, 4, 6]


def test_translate_tool_prints_one_line_per_input_in_order(workdir, run, tmp_path):
  lines = ["5 9 11 4", "7 7 7", "30 4 12 19 8 6", "3"]
  path = tmp_path / "input.txt"
  path.write_text("\n".join(lines) + "\n")
  result = _tool("translate", f"--workdir={workdir}", f"--input={path}", "--beam_size=2")
  assert result.returncode == 0, result.stderr[-2000:]
  printed = result.stdout.split("\n")
  assert printed[-1] == "" and len(printed) == len(lines) + 1
  # In-process from stdin: the same lines, equal to translating with the latest params.
  out = io.StringIO()
  hyps = commands.translate(workdir, beam_size=2, stdin=io.StringIO("\n".join(lines)),
                            stdout=out)
  assert printed[:-1] == hyps == out.getvalue().split("\n")[:-1]
  params, _ = run_lib.restore_params(run, "6")
  assert hyps == evaluation.translate_texts(run, params, lines, beam_size=2)


def test_translate_bad_input_messages(workdir, tmp_path):
  def error(*args, stdin=""):
    result = _tool("translate", *args, stdin=stdin)
    assert result.returncode == 1 and result.stdout == ""
    return result.stderr.strip().splitlines()[-1]

  over_long = "4 5\n" + " ".join(["9"] * 70) + "\n"
  assert error(f"--workdir={workdir}", stdin=over_long) == (
      "error: line 2 is 71 tokens long (with EOS); the model takes at most 64 (model.max_len)")

  def message(**kwargs):
    with pytest.raises((ValueError, OSError)) as e:
      commands.translate(kwargs.pop("workdir", workdir), stdout=io.StringIO(), **kwargs)
    return str(e.value)

  assert message(input_path=str(tmp_path / "nope.txt")) == (
      f"--input file '{tmp_path / 'nope.txt'}' does not exist")
  (tmp_path / "empty.txt").write_text("")
  assert message(input_path=str(tmp_path / "empty.txt")) == (
      f"the input is empty: no lines to translate in {tmp_path / 'empty.txt'}")
  assert message(stdin=io.StringIO("\n \n")) == "the input is empty: no lines to translate on stdin"
  assert message(stdin=io.StringIO("4 5"), beam_size=0) == (
      "--beam_size=0 must be >= 1 (1 is greedy decoding)")
  assert message(stdin=io.StringIO("4 5"), checkpoint="5") == (
      "--checkpoint='5': not 'latest', 'averaged' or a saved step (steps: 2, 4, 6)")
  bare = tmp_path / "bare"
  bare.mkdir()
  assert message(workdir=str(bare), stdin=io.StringIO("4")) == (
      f"workdir {str(bare)!r} holds no training run (no run_config.json)")
  for name in ("run_config.json", "manifest.json"):  # a run that has not saved a checkpoint yet
    shutil.copy(os.path.join(workdir, name), bare / name)
  assert message(workdir=str(bare), stdin=io.StringIO("4")) == (
      f"workdir {bare} has no checkpoint (checkpoints/ is empty or missing); train first")
  assert message(workdir=str(bare), stdin=io.StringIO("4"), checkpoint="averaged").startswith(
      f"workdir {bare} has no averaged checkpoint; run python -m experiments.average_checkpoints")
  assert sorted(os.listdir(bare)) == ["manifest.json", "run_config.json"]  # nothing written


def test_evaluate_split_and_files_score_every_line(workdir, run, tmp_path):
  pairs = evaluation.split_examples(run, "test")
  out = io.StringIO()
  result = commands.evaluate(workdir, split="test", beam_size=1, batch_size=5,
                             output=str(tmp_path / "hyps.txt"), stdout=out)
  assert len(pairs) == 16 and result["lines"] == 16 and len(result["hypotheses"]) == 16
  assert (tmp_path / "hyps.txt").read_text().split("\n")[:-1] == result["hypotheses"]
  references = [t for _, t in pairs]
  assert result["bleu"] == sacrebleu.corpus_bleu(result["hypotheses"], [references]).score
  assert result["chrf"] == sacrebleu.corpus_chrf(result["hypotheses"], [references]).score
  # Perplexity equals the training loop's own test evaluation at the final step.
  final = [r for r in run_records.read_metrics(workdir) if r["split"] == "test"][-1]
  assert final["step"] == 6
  assert result["teacher_forced"]["perplexity"] == pytest.approx(final["perplexity"], rel=1e-5)
  assert result["teacher_forced"]["tokens"] == final["tokens"]
  text = out.getvalue()
  for expected in ("direction: synthetic_seq2seq/copy (inputs -> targets)",
                   "16 lines; decoding: greedy",
                   "BLEU signature: nrefs:1|case:mixed|eff:no|tok:13a",
                   "chrF signature: nrefs:1|",
                   f"perplexity: {result['teacher_forced']['perplexity']:.4f}"):
    assert expected in text, text
  # The same pairs as files: the same numbers.
  (tmp_path / "src.txt").write_text("".join(s + "\n" for s, _ in pairs))
  (tmp_path / "ref.txt").write_text("".join(t + "\n" for _, t in pairs))
  files = commands.evaluate(workdir, source=str(tmp_path / "src.txt"),
                            reference=str(tmp_path / "ref.txt"), beam_size=1, batch_size=5,
                            perplexity=False, stdout=io.StringIO())
  assert files["hypotheses"] == result["hypotheses"] and files["bleu"] == result["bleu"]
  with pytest.raises(commands.UsageError, match="either --split or both --source and --reference"):
    commands.evaluate(workdir, stdout=io.StringIO())


def test_bleu_on_split_from_the_training_loop_layout(workdir, run):
  params, _ = run_lib.restore_params(run, "latest")
  dp = parallel.DataParallel("pmap")
  loop_run = run_lib.load(workdir)   # a Run of its own: training holds one too
  in_loop = evaluation.bleu_on_split(loop_run, dp.put_replicated(params), "validation", limit=5)
  assert in_loop == evaluation.bleu_on_split(run, params, "validation", limit=5)
  assert in_loop["bleu_lines"] == 5.0 and set(in_loop) == {"bleu", "chrf", "bleu_lines"}
  assert ("raw", "validation") in loop_run.cache  # read once, reused
  whole = evaluation.bleu_on_split(run, params, "validation", batch_size=5)
  assert whole["bleu_lines"] == len(evaluation.split_examples(run, "validation")) == 16
  json.dumps(in_loop)  # plain floats: ready for metrics.jsonl
