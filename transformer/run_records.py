"""What a run leaves behind: metrics.jsonl, TensorBoard events, manifest.json, progress lines.

Only process 0 writes. metrics.jsonl holds one JSON object per line
({"step", "split", <metric>: value}); on resume the lines past the restored step
are dropped, so a resumed run's records equal an uninterrupted run's (no (step, split)
row twice). Every reader goes through `read_records`, which drops a torn last line (a kill
or a full disk mid-write) with a warning. TensorBoard events are written by tensorboardX
(no TensorFlow), with `purge_step` for the same reason.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import jax
from absl import logging

from transformer import settings

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets",
            "ml-collections", "numpy", "sentencepiece", "tensorboardX")


def _is_writer() -> bool:
  return jax.process_index() == 0


def _write_atomic(path: str, text: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


class RecordError(settings.ConfigError):
  """A run record that cannot be read; the message is one line naming the file and line."""


def read_records(path: str) -> list[dict[str, Any]]:
  """The {"step", "split", ...} records of a JSON-lines file; a torn last line is dropped
  with a warning, a bad line elsewhere raises RecordError."""
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not {"step", "split"} <= record.keys():
        raise ValueError("not a {step, split, ...} record")
    except ValueError as e:
      if any(rest.strip() for rest in lines[number:]):
        raise RecordError(f"{path} line {number}: unreadable ({str(e)[:80]}); only a torn last "
                          "line is dropped by itself: repair or remove this one") from None
      logging.warning("%s: dropped its last line, torn by an interrupted write (%d bytes)",
                      path, len(line))
      continue
    records.append(record)
  return records


class MetricsWriter:
  """Appends metrics to WORKDIR/metrics.jsonl and TensorBoard event files.

  resume_step: the restored checkpoint's step; 0 (nothing restored) starts the log afresh.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not _is_writer():
      return
    if os.path.exists(self.path):  # drop what a killed run logged after its last checkpoint
      records = read_records(self.path)
      # The loop logs every split of the restored step before saving it, and logs none of
      # them again, except the end-of-run test line. Without a checkpoint it starts at step
      # 0 again, attention diagnostics included: nothing logged before is kept.
      kept = [r for r in records if resume_step and (
          r["step"] < resume_step or (r["step"] == resume_step and r["split"] != "test"))]
      text = "".join(json.dumps(r) + "\n" for r in kept)
      with open(self.path) as f:
        if f.read() != text:
          _write_atomic(self.path, text)
    from tensorboardX import SummaryWriter  # imported late: it is slow to import
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=resume_step + 1 if resume_step else 0, flush_secs=30)

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not _is_writer():
      return
    record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for name, value in metrics.items():
      self._tb.add_scalar(f"{split}/{name}", float(value), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class _LibraryNoise:
  """A logging filter for Orbax, Grain and TFDS records: their INFO lines drown the progress
  lines, and a few of their warnings report what is normal here, often many times a run."""
  _LIBRARIES = ("/orbax/", "/grain/", "/tensorflow_datasets/")
  _EXPECTED = (  # format strings, as the libraries pass them to `logging.warning`
      "Using custom data configuration",  # TFDS: every project dataset is a custom config
      "Variant folder %s has no %s",  # TFDS: asked whether data not yet prepared is prepared
      "Given directory is read only",  # Orbax: checkpoints opened read-only, to evaluate
      "OpenCV is not installed",  # TFDS: images decode with PIL, as they should here
  )

  def filter(self, record) -> bool:
    if not any(part in record.pathname for part in self._LIBRARIES):
      return True
    return record.levelno >= 30 and not str(record.msg).startswith(self._EXPECTED)


def quiet_library_logs() -> None:
  """One line per event in a run's log: drops library chatter (`_LibraryNoise`) and TFDS's
  progress bars, which, written to a file, leave a fragment per update."""
  import tensorflow_datasets as tfds  # noqa: PLC0415
  from absl import logging as absl_logging  # noqa: PLC0415
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _LibraryNoise) for f in handler.filters):
    handler.addFilter(_LibraryNoise())
  tfds.display_progress_bar(False)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """WORKDIR/metrics.jsonl's records (see `read_records`)."""
  return read_records(os.path.join(workdir, "metrics.jsonl"))


def _git(*args: str) -> str:
  try:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""


def _version(name: str) -> str | None:
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def write_manifest(workdir: str, config: Mapping[str, Any], *, seed: int,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """WORKDIR/manifest.json: enough to say what ran where, and to run it again."""
  manifest = {
      "config": config,
      "command_line": [sys.executable, *sys.argv],
      "git_commit": _git("rev-parse", "HEAD") or None,
      "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
      "packages": {name: _version(name) for name in PACKAGES},
      "python": platform.python_version(),
      "device_kind": jax.devices()[0].device_kind,
      "platform": jax.devices()[0].platform,
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(),
      "seed": seed,
      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      **(extra or {}),
  }
  if _is_writer():
    _write_atomic(os.path.join(workdir, "manifest.json"), json.dumps(manifest, indent=2) + "\n")
  return manifest


class Progress:
  """steps/s, tokens/s and ETA: one rewritten line on a terminal, plain log lines otherwise."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self.start_step = self.last_step = start_step
    self.start_time = self.last_time = time.perf_counter()
    self.tty = sys.stderr.isatty() and _is_writer()
    self.tokens = 0.0

  def update(self, step: int, tokens: float, summary: Mapping[str, float]) -> dict[str, float]:
    """Called at a logging boundary (after a device sync); returns the rates."""
    now = time.perf_counter()
    dt = max(now - self.last_time, 1e-9)
    steps_per_sec = (step - self.last_step) / dt
    rates = {"steps_per_sec": steps_per_sec, "tokens_per_sec": tokens / dt}
    self.last_step, self.last_time = step, now
    eta = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
    line = (f"step {step}/{self.total} loss {summary.get('loss', float('nan')):.4f} "
            f"acc {summary.get('accuracy', float('nan')):.4f} | {steps_per_sec:.2f} steps/s "
            f"{rates['tokens_per_sec']:.0f} tok/s | ETA {_duration(eta)}")
    if self.tty:
      sys.stderr.write("\r" + line.ljust(100))
      sys.stderr.flush()
    else:
      logging.info("%s", line)
    return rates

  def close(self) -> None:
    if self.tty:
      sys.stderr.write("\n")


def _duration(seconds: float) -> str:
  if seconds == float("inf"):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
