"""The attention-scale sweep: one reproducible run per (policy, seed), then tables.

Each run lives in `DIR/<policy>_seed<seed>/` with the usual manifest and metrics. A
run that ended (finished, diverged or failed) leaves `sweep_status.json` and is reused
by the next call; an interrupted one has none and resumes from its checkpoint. The
tables and pictures (`transformer.sweep_plots`) are rebuilt from the run directories.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from transformer import run_records, settings
from transformer.attention import parse_scale
from transformer.config import ATTENTION_KINDS

STATUS_FILE = "sweep_status.json"
# (column, split in metrics.jsonl, metric): the final value of each goes into the table.
FINAL_METRICS = (("train_loss", "train", "loss"), ("eval_loss", "eval", "loss"),
                 ("eval_accuracy", "eval", "accuracy"), ("test_loss", "test", "loss"),
                 ("test_accuracy", "test", "accuracy"),
                 ("test_exact_match", "test", "greedy_exact_match"),
                 ("eval_bleu", "eval_bleu", "bleu"))


def run_name(policy: str, seed: int) -> str:
  """A directory name for a policy: 'constant:0.05' -> 'constant-0.05_seed0'."""
  return re.sub(r"[^A-Za-z0-9._-]+", "-", policy) + f"_seed{seed}"


def check_sweep_args(scales: Sequence[str], seeds: Sequence[int]) -> None:
  """One-line errors for bad --scales/--seeds, before anything runs."""
  if not scales:
    raise ValueError("--scales is empty")
  if not seeds:
    raise ValueError("--seeds is empty")
  for s in scales:
    parse_scale(s)
  for name, values in (("--scales", list(scales)), ("--seeds", list(seeds))):
    if len(set(values)) != len(values):
      raise ValueError(f"{name} repeats a value: {values}")


PER_KIND_SCALES = tuple(f"{kind}_attention_scale" for kind in ATTENTION_KINDS)


def run_config(base: ml_collections.ConfigDict, policy: str, seed: int) -> ml_collections.ConfigDict:
  fixed = [k for k in PER_KIND_SCALES if base.model.get(k) is not None]
  if fixed:  # they would override the swept policy in part of the model
    raise ValueError(f"the base config sets model.{', model.'.join(fixed)}; the sweep varies "
                     "model.attention_scale for every attention, so leave those unset")
  config = ml_collections.ConfigDict(base.to_dict())  # an unlocked copy
  config.model.attention_scale = policy
  config.seed = seed
  return config


def _write_json(path: str, value: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def run_one(config: ml_collections.ConfigDict, run_dir: str,
            train_fn: Callable[[Any, str], Any]) -> dict[str, Any]:
  """Trains one run unless it already ended; returns its status record.

  A run directory is reused only if the resolved config its status records agrees with
  `config` on the keys training compares on resume (`settings.differences`).
  """
  resolved = settings.resolved_config(*settings.resolve(config))
  status_path = os.path.join(run_dir, STATUS_FILE)
  if os.path.exists(status_path):
    with open(status_path) as f:
      status = json.load(f)
    diffs = settings.differences(status.get("config") or {}, resolved)
    if diffs:
      raise ValueError(f"{run_dir} holds a run of another config ({diffs}); use a new "
                       "--workdir or delete that run directory")
    logging.info("reusing %s (%s)", run_dir, status["status"])
    return status
  os.makedirs(run_dir, exist_ok=True)
  from transformer.train import NonFiniteError  # noqa: PLC0415  (heavy import)
  try:
    result = train_fn(config, run_dir)
    if isinstance(result, dict) and result.get("preempted"):
      raise KeyboardInterrupt("preempted: the sweep stops and resumes on the next call")
    status = {"status": "finished", "message": ""}
  except NonFiniteError as e:
    status = {"status": "diverged", "message": str(e)}
  except (KeyboardInterrupt, settings.ConfigError):
    raise
  except Exception as e:  # noqa: BLE001  (a failed run is recorded, never silently dropped)
    logging.error("run %s failed:\n%s", run_dir, traceback.format_exc())
    status = {"status": "failed", "message": f"{type(e).__name__}: {e}"}
  status["config"] = resolved
  _write_json(status_path, status)
  return status


def run_sweep(base: ml_collections.ConfigDict, workdir: str, scales: Sequence[str],
              seeds: Sequence[int], train_fn: Callable[[Any, str], Any] | None = None
              ) -> list[dict[str, Any]]:
  """Runs (or reuses) every (policy, seed) and returns one record per run."""
  check_sweep_args(scales, seeds)
  if train_fn is None:
    from transformer.train import train_and_evaluate as train_fn  # noqa: PLC0415
  records = []
  for policy in scales:
    for seed in seeds:
      run_dir = os.path.join(workdir, run_name(policy, seed))
      status = run_one(run_config(base, policy, seed), run_dir, train_fn)
      records.append({"policy": policy, "seed": seed, "run_dir": run_dir, **status})
  return records


def run_metrics(run_dir: str) -> list[dict[str, Any]]:
  path = os.path.join(run_dir, "metrics.jsonl")
  return run_records.read_metrics(run_dir) if os.path.exists(path) else []


def final_value(metrics: list[dict[str, Any]], split: str, name: str) -> float:
  values = [m[name] for m in metrics if m["split"] == split and name in m]
  return float(values[-1]) if values else math.nan


def steps_to_target(metrics: list[dict[str, Any]], target_loss: float) -> float:
  """First logged training step whose loss is at or below the target (NaN if never)."""
  for m in metrics:
    if m["split"] == "train" and m.get("loss", math.inf) <= target_loss:
      return float(m["step"])
  return math.nan


def summarize(records: list[dict[str, Any]], target_loss: float) -> list[dict[str, Any]]:
  """One row per policy: mean and std over its finished seeds, counts of the others."""
  rows = []
  for policy in dict.fromkeys(r["policy"] for r in records):
    runs = [r for r in records if r["policy"] == policy]
    done = [r for r in runs if r["status"] == "finished"]
    row: dict[str, Any] = {"policy": policy, "runs": len(runs), "finished": len(done),
                           "diverged": sum(r["status"] == "diverged" for r in runs),
                           "failed": sum(r["status"] == "failed" for r in runs)}
    metrics = [run_metrics(r["run_dir"]) for r in done]
    for column, split, name in FINAL_METRICS:
      values = np.array([final_value(m, split, name) for m in metrics], np.float64)
      row[column] = _mean_std(values)
    steps = np.array([steps_to_target(m, target_loss) for m in metrics], np.float64)
    row["steps_to_target"] = _mean_std(steps)
    row["reached_target"] = int(np.sum(~np.isnan(steps)))
    rows.append(row)
  return rows


def _mean_std(values: np.ndarray) -> tuple[float, float, int]:
  values = values[~np.isnan(values)]
  if not values.size:
    return (math.nan, math.nan, 0)
  return (float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0,
          int(values.size))


def _fmt(cell: Any) -> str:
  if isinstance(cell, tuple):
    mean, std, n = cell
    return "n/a" if n == 0 else f"{mean:.4g} ± {std:.2g}"
  return str(cell)


def write_tables(rows: list[dict[str, Any]], records: list[dict[str, Any]], workdir: str,
                 target_loss: float) -> tuple[str, str]:
  """DIR/results.md (readable) and DIR/results.csv (mean and std as separate columns)."""
  columns = [c for c, _, _ in FINAL_METRICS] + ["steps_to_target"]
  present = [c for c in columns if any(row[c][2] for row in rows)] or columns[:1]
  md = os.path.join(workdir, "results.md")
  lines = ["# Attention-scale sweep", "",
           f"Mean ± std over finished seeds; steps_to_target: first logged step with training "
           f"loss <= {target_loss}.", "",
           "| policy | finished | diverged | failed | reached target | " + " | ".join(present)
           + " |", "|---" * (5 + len(present)) + "|"]
  for row in rows:
    lines.append(f"| {row['policy']} | {row['finished']}/{row['runs']} | {row['diverged']} | "
                 f"{row['failed']} | {row['reached_target']} | "
                 + " | ".join(_fmt(row[c]) for c in present) + " |")
  lines += ["", "## Runs", "", "| policy | seed | status | directory | message |",
            "|---|---|---|---|---|"]
  for r in records:
    message = r.get("message", "").replace("|", "/").replace("\n", " ")[:160]
    lines.append(f"| {r['policy']} | {r['seed']} | {r['status']} | "
                 f"{os.path.basename(r['run_dir'])} | {message} |")
  with open(md, "w") as f:
    f.write("\n".join(lines) + "\n")
  path_csv = os.path.join(workdir, "results.csv")
  with open(path_csv, "w", newline="") as f:
    writer = csv.writer(f)
    header = ["policy", "runs", "finished", "diverged", "failed", "reached_target"]
    writer.writerow(header + [f"{c}_{s}" for c in columns for s in ("mean", "std", "n")])
    for row in rows:
      writer.writerow([row[h] for h in header] + [v for c in columns for v in row[c]])
  return md, path_csv
