"""What experiments/{translate,evaluate,sample,average_checkpoints}.py do, callable from tests.

Each command checks its input first (workdir, checkpoint, files, line lengths) and
raises a one-line ValueError / OSError naming the problem before anything is compiled;
the entry points print it as `error: ...` and exit 1. Nothing here writes into the
workdir except `average`, which writes only WORKDIR/averaged/ (and translate's
--attention_map picture, which goes where the flag says).
"""

from __future__ import annotations

import math
import os
import sys
from typing import IO, Any

from absl import logging

from transformer import attention_maps, averaging, evaluation, run_records
from transformer import run as run_lib
from transformer.data import text_files


class UsageError(ValueError):
  """Bad flags or input; the message is one line."""


def _lines(text: str) -> list[str]:
  lines = [line.removesuffix("\r") for line in text.split("\n")]
  return lines[:-1] if lines and lines[-1] == "" else lines


def read_input(path: str | None, stdin: IO[str]) -> list[str]:
  """Lines of --input (plain or .gz, or a pipe such as <(...)) or of stdin, without line
  endings; raises UsageError when there is none."""
  if path and not os.path.exists(path):
    raise UsageError(f"--input file {path!r} does not exist")
  if path and os.path.isfile(path):
    try:
      lines = text_files.read_lines(path)  # names the line of any invalid UTF-8
    except ValueError as e:
      if "file is empty" not in str(e):
        raise
      lines = []
  elif path:
    with open(path, encoding="utf-8") as f:
      lines = _lines(f.read())
  else:
    lines = _lines(stdin.read())
  if not any(line.strip() for line in lines):
    raise UsageError("the input is empty: no lines to translate"
                     + (f" in {path}" if path else " on stdin"))
  return lines


def _check_decoding(beam_size: int, alpha: float, batch_size: int) -> None:
  if beam_size < 1:
    raise UsageError(f"--beam_size={beam_size} must be >= 1 (1 is greedy decoding)")
  if not math.isfinite(alpha) or alpha < 0:  # nan compares False: it would pass `alpha < 0`
    raise UsageError(f"--alpha={alpha} must be a finite number >= 0 (0: no length penalty)")
  if batch_size < 1:
    raise UsageError(f"--batch_size={batch_size} must be >= 1")


def _check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UsageError(f"--workdir={workdir!r} is a file, not a training run's directory")


def _check_picture(path: str) -> None:
  if not path.lower().endswith(".png"):
    raise UsageError(f"--attention_map={path!r} must name a .png file")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UsageError(f"--attention_map={path!r}: directory {parent!r} does not exist")


def translate(workdir: str, *, input_path: str | None = None, beam_size: int = 4,
              alpha: float = 0.6, checkpoint: str = "latest", batch_size: int = 32,
              attention_map: str | None = None, stdin: IO[str] | None = None,
              stdout: IO[str] | None = None) -> list[str]:
  """Prints one translation per input line, in order; returns them. With attention_map,
  also draws the first line's decoder cross-attention (teacher-forced on its output)."""
  _check_decoding(beam_size, alpha, batch_size)
  _check_workdir(workdir)
  if attention_map:
    _check_picture(attention_map)
  run = run_lib.load(workdir)
  run.check_translation()
  run_lib.check_checkpoint(run, checkpoint)
  lines = read_input(input_path, stdin or sys.stdin)
  sources = evaluation.encode_sources(run, lines)  # over-long lines fail here, before compiling
  params, described = run_lib.restore_params(run, checkpoint)
  logging.info("translating %d lines (%s) with the %s params of %s", len(lines), run.direction,
               described, workdir)
  outputs = evaluation.translate_ids(run, params, sources, beam_size=beam_size, alpha=alpha,
                                     batch_size=batch_size)
  hypotheses = [run.tokenizer.decode(ids.tolist()) for ids in outputs]
  assert len(hypotheses) == len(lines), (len(hypotheses), len(lines))
  out = stdout or sys.stdout
  for line in hypotheses:
    out.write(line.replace("\n", " ") + "\n")
  out.flush()
  if attention_map:  # check_translation above refused decoder-only runs (no cross-attention)
    attention_maps.plot_translation(
        run, evaluation.device_params(run.model, params), sources[0], outputs[0], attention_map,
        f"Cross-attention of input line 1, teacher-forced on its output\n{run.direction}")
    logging.info("attention map of line 1: %s", attention_map)
  return hypotheses


def _pairs(run: run_lib.Run, split: str | None, source: str | None, reference: str | None,
           limit: int) -> tuple[list[tuple[str, str]], str]:
  if bool(split) == bool(source or reference):
    raise UsageError("give either --split or both --source and --reference")
  if split:
    try:
      pairs = evaluation.split_examples(run, split, limit)
    except ValueError as e:
      raise UsageError(str(e).splitlines()[0]) from None
    what = f"split {split!r} of {run.data.dataset}"
    changed = run_lib.changed_data(run)
    if changed:  # scored as the data holds it now, with the run's own vocabulary
      what += f" (the data changed since training: {'; '.join(changed)})"
      logging.warning("%s: %s", run.workdir, what)
    return pairs, what
  if not (source and reference):
    raise UsageError("--source and --reference go together")
  for flag, path in (("--source", source), ("--reference", reference)):
    if not os.path.isfile(path):
      raise UsageError(f"{flag} file {path!r} does not exist")
  pairs = [(s, t) for _, s, t in text_files.read_parallel(source, reference)]
  return pairs[:limit] if limit > 0 else pairs, f"{source} against {reference}"


def evaluate(workdir: str, *, split: str | None = None, source: str | None = None,
             reference: str | None = None, beam_size: int = 4, alpha: float = 0.6,
             checkpoint: str = "latest", batch_size: int = 32, limit: int = 0,
             output: str | None = None, perplexity: bool = True,
             stdout: IO[str] | None = None) -> dict[str, Any]:
  """Prints BLEU and chrF (with signatures), direction, line count and perplexity; for an
  image classifier or a language model, the metrics of a split (`evaluate_split`)."""
  _check_decoding(beam_size, alpha, batch_size)
  _check_workdir(workdir)
  if limit < 0:
    raise UsageError(f"--limit={limit} must be >= 0 (0: all lines)")
  if output and any(output and os.path.exists(p) and os.path.samefile(output, p)
                    for p in (source, reference) if p):
    raise UsageError(f"--output={output!r} would overwrite an input file")
  run = run_lib.load(workdir)
  if run.data.images or run.data.decoder_only:
    if not split or source or reference:
      raise UsageError(f"{'an image classifier' if run.data.images else 'a language model'} is "
                       "evaluated on a --split of its dataset (no --source / --reference)")
    return evaluate_split(run, split, checkpoint=checkpoint, batch_size=batch_size,
                          limit=limit, stdout=stdout)
  run.check_translation()
  run_lib.check_checkpoint(run, checkpoint)
  pairs, what = _pairs(run, split, source, reference, limit)
  params, described = run_lib.restore_params(run, checkpoint)
  scores, hypotheses = evaluation.score_pairs(run, params, pairs, beam_size=beam_size,
                                              alpha=alpha, batch_size=batch_size)
  assert len(hypotheses) == len(pairs) == scores["lines"]
  result: dict[str, Any] = {**scores, "checkpoint": described, "direction": run.direction}
  if perplexity:
    result["teacher_forced"] = evaluation.perplexity(run, params, pairs, batch_size=batch_size)
  decoding = "greedy" if beam_size == 1 else f"beam {beam_size}, alpha {alpha}"
  lines = [f"run: {run.workdir} ({described})",
           f"direction: {run.direction}",
           f"data: {what}, {len(pairs)} lines; decoding: {decoding}",
           f"BLEU: {scores['bleu_text']}",
           f"BLEU signature: {scores['bleu_signature']}",
           f"chrF: {scores['chrf']:.2f}",
           f"chrF signature: {scores['chrf_signature']}"]
  if perplexity:
    tf = result["teacher_forced"]
    lines.append(f"perplexity: {tf['perplexity']:.4f} (teacher-forced, unsmoothed nll "
                 f"{tf['nll']:.4f} per token over {int(tf['tokens'])} target tokens)")
  if output:
    with open(output, "w") as f:
      f.writelines(h.replace("\n", " ") + "\n" for h in hypotheses)
    lines.append(f"hypotheses: {output}")
  out = stdout or sys.stdout
  out.write("\n".join(lines) + "\n")
  out.flush()
  return {**result, "hypotheses": hypotheses}


def evaluate_split(run: run_lib.Run, split: str, *, checkpoint: str = "latest",
                   batch_size: int = 32, limit: int = 0, stdout: IO[str] | None = None
                   ) -> dict[str, Any]:
  """Prints the teacher-forced metrics of a split (`limit`: the first that many batches): an
  image run's top-1 accuracy, a language model's nats and bits per character (or token)."""
  run_lib.check_checkpoint(run, checkpoint)
  params, described = run_lib.restore_params(run, checkpoint)
  try:
    scores = evaluation.split_metrics(run, params, split, batch_size=batch_size, limit=limit)
  except ValueError as e:  # e.g. a split the dataset does not have
    raise UsageError(str(e).splitlines()[0]) from None
  lines = [f"run: {run.workdir} ({described})"]
  if run.data.images:
    result = {"top1_accuracy": scores["accuracy"], "loss": scores["loss"], "nll": scores["nll"],
              "images": scores["tokens"]}
    lines += [f"data: split {split!r} of {run.data.dataset}, {int(scores['tokens'])} images",
              f"top-1 accuracy: {scores['accuracy']:.4f}",
              f"loss: {scores['loss']:.4f} (label smoothing {run.settings.label_smoothing}), "
              f"nll: {scores['nll']:.4f}"]
  else:
    unit = run.text_unit or "token"
    result = {k: scores[k] for k in ("loss", "nll", "perplexity", "accuracy", "tokens")}
    result[f"bits_per_{unit}"] = scores["nll"] / math.log(2)
    lines += [f"data: split {split!r} of {run.data.dataset}, {int(scores['tokens'])} tokens "
              f"({'one per ' + unit + ', and one per document end' if run.text_unit else 'with document ends'})",
              f"nll: {scores['nll']:.4f} nats per {unit}, {result[f'bits_per_{unit}']:.4f} bits per "
              f"{unit} (perplexity {scores['perplexity']:.3f}, next-{unit} accuracy "
              f"{scores['accuracy']:.4f})"]
  out = stdout or sys.stdout
  out.write("\n".join(lines) + "\n")
  out.flush()
  return {**result, "checkpoint": described, "direction": run.direction}


def sample(workdir: str, *, prompt: str = "", length: int = 500, temperature: float = 1.0,
           top_k: int = 0, seed: int = 0, checkpoint: str = "latest",
           stdout: IO[str] | None = None) -> str:
  """Prints the prompt and `length` sampled tokens of continuation (a language-model run's
  checkpoint, `evaluation.sample_ids`); returns the continuation's text."""
  if not math.isfinite(temperature) or temperature <= 0:
    raise UsageError(f"--temperature={temperature} must be a finite number > 0 (lower is "
                     "more conservative; 1 samples the model's distribution)")
  if top_k < 0:
    raise UsageError(f"--top_k={top_k} must be >= 0 (0: sample from every token)")
  if length < 1:
    raise UsageError(f"--length={length} must be >= 1")
  _check_workdir(workdir)
  run = run_lib.load(workdir)
  run.check_language_model()
  run_lib.check_checkpoint(run, checkpoint)
  ids = list(run.tokenizer.encode(prompt))
  unknown = sorted({c for c in prompt if run.tokenizer.unk_id in run.tokenizer.encode(c)})
  if unknown:
    raise UsageError(f"--prompt has characters outside the run's vocabulary: "
                     f"{' '.join(map(repr, unknown))}")
  params, described = run_lib.restore_params(run, checkpoint)
  logging.info("sampling %d tokens after a %d-token prompt from the %s params of %s", length,
               len(ids), described, workdir)
  new = evaluation.sample_ids(run, params, ids, length=length, temperature=temperature,
                              top_k=top_k, seed=seed)
  text = run.tokenizer.decode(new)
  out = stdout or sys.stdout
  out.write(prompt + text + "\n")
  out.flush()
  return text


def average(workdir: str, last: int, *, overwrite: bool = False,
            stdout: IO[str] | None = None) -> dict[str, Any]:
  """Averages the last N checkpoints into WORKDIR/averaged/STEP; prints what it did."""
  _check_workdir(workdir)
  meta = averaging.average_last(workdir, last, overwrite=overwrite)
  steps = ", ".join(map(str, meta["steps"]))
  verb = "already holds" if meta["existing"] else "wrote"
  out = stdout or sys.stdout
  out.write(f"{meta['path']}: {verb} the average of the params of steps {steps}; use "
            f"--checkpoint=averaged\n")
  out.flush()
  return meta


def run_tool(fn, *args: Any, **kwargs: Any) -> Any:
  """Runs a command for an entry point: a bad input becomes `error: ...` and exit status 1."""
  run_records.quiet_library_logs()
  try:
    return fn(*args, **kwargs)
  except (ValueError, OSError) as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    sys.exit(f"error: {message}")
