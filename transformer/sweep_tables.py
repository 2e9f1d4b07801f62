"""A sweep's tables, rebuilt from its run directories: DIR/results.csv and DIR/results.md.

One row per grid point (its seeds together): run counts by status, then each final
metric as mean ± std over the finished seeds ("(n=1)" for a lone seed; the csv has mean,
std and n columns). With two or more grid keys, results.md also pivots `--metric` over the
first two keys, once for each combination of the other keys' values.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from typing import Any

import numpy as np

from transformer import run_records
from transformer.sweep_grid import value_text

# (column, split in metrics.jsonl, metric): the final value of each goes into the table.
FINAL_METRICS = (("train_loss", "train", "loss"), ("eval_loss", "eval", "loss"),
                 ("eval_accuracy", "eval", "accuracy"), ("test_loss", "test", "loss"),
                 ("test_accuracy", "test", "accuracy"),
                 ("test_exact_match", "test", "greedy_exact_match"),
                 ("eval_perplexity", "eval", "perplexity"),
                 ("eval_bits_per_char", "eval", "bits_per_char"), ("eval_bleu", "eval_bleu", "bleu"))
# Of `sweep.score_runs` (a split decoded once after training), where the records carry it.
SCORES = (("score_bleu", "bleu"), ("score_chrf", "chrf"))
METRICS = tuple(c for c, _, _ in FINAL_METRICS) + tuple(c for c, _ in SCORES) + (
    "steps_to_target",)
COUNTS = ("runs", "finished", "diverged", "failed", "reached_target")


def check_metric(name: str) -> None:
  if name not in METRICS:
    raise ValueError(f"unknown --metric {name!r}; valid: {', '.join(METRICS)}")


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


def grid_keys(records: list[dict[str, Any]]) -> list[str]:
  """The table's and pictures' axes: one per --grid flag (keys varied together are one)."""
  return list(records[0]["axes"]) if records else []


def summarize(records: list[dict[str, Any]], target_loss: float) -> list[dict[str, Any]]:
  """One row per grid point: counts by status, (mean, std, n) of each metric over the
  finished seeds."""
  rows = []
  for name in dict.fromkeys(r["name"] for r in records):
    runs = [r for r in records if r["name"] == name]
    done = [r for r in runs if r["status"] == "finished"]
    row: dict[str, Any] = {"name": name, "values": runs[0]["axes"], "runs": len(runs),
                           "finished": len(done),
                           "diverged": sum(r["status"] == "diverged" for r in runs),
                           "failed": sum(r["status"] == "failed" for r in runs)}
    metrics = [run_metrics(r["run_dir"]) for r in done]
    for column, split, name in FINAL_METRICS:
      row[column] = _mean_std(np.array([final_value(m, split, name) for m in metrics],
                                       np.float64))
    for column, name in SCORES:
      row[column] = _mean_std(np.array([(r.get("score") or {}).get(name, math.nan)
                                        for r in done], np.float64))
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


def _scored(records: list[dict[str, Any]]) -> str:
  scores = [r["score"] for r in records if r.get("score")]
  if not scores:
    return ""
  s = scores[0]
  decoding = "greedy" if s["beam_size"] == 1 else f"beam {s['beam_size']}, alpha {s['alpha']}"
  return (f" score_*: split {s['split']!r} decoded once after training ({decoding}); "
          f"{s['bleu_signature']}")


def _fmt(cell: Any) -> str:
  if isinstance(cell, tuple):
    mean, std, n = cell
    if n < 2:  # one seed has no spread: "± 0" would claim one
      return "n/a" if n == 0 else f"{mean:.4g} (n=1)"
    return f"{mean:.4g} ± {std:.2g}"
  return str(cell)


def _cell(text: str) -> str:
  return text.replace("|", "/").replace("\n", " ")


def pivots(rows: list[dict[str, Any]], keys: list[str], metric: str) -> list[str]:
  """Markdown lines: `metric` with the first key's values as rows and the second's as
  columns, one table for each combination of the other keys' values."""
  if len(keys) < 2:
    return []
  by_values = {tuple(r["values"][k] for k in keys): r for r in rows}
  axes = [list(dict.fromkeys(r["values"][k] for r in rows)) for k in keys]
  lines = [f"## {metric}: {keys[0]} (rows) × {keys[1]} (columns)", ""]
  for rest in itertools.product(*axes[2:]):
    if rest:
      lines += [", ".join(f"{k}={value_text(v)}" for k, v in zip(keys[2:], rest)) + ":", ""]
    lines += [f"| {keys[0]} \\ {keys[1]} | " + " | ".join(map(value_text, axes[1])) + " |",
              "|---" * (1 + len(axes[1])) + "|"]
    for a in axes[0]:
      cells = [by_values.get((a, b, *rest)) for b in axes[1]]
      lines.append(f"| {_cell(value_text(a))} | "
                   + " | ".join(_fmt(r[metric]) if r else "" for r in cells) + " |")
    lines.append("")
  return lines


def write_tables(rows: list[dict[str, Any]], records: list[dict[str, Any]], workdir: str,
                 target_loss: float, metric: str = "eval_loss") -> tuple[str, str]:
  """DIR/results.md (readable, with the pivots) and DIR/results.csv (mean, std, n columns)."""
  keys = grid_keys(records)
  present = [c for c in METRICS if any(row[c][2] for row in rows)] or [metric]
  md = os.path.join(workdir, "results.md")
  lines = [f"# Sweep over {', '.join(keys) or 'seeds'}", "",
           f"Mean ± std over finished seeds; steps_to_target: first logged step with training "
           f"loss <= {target_loss}." + _scored(records), "",
           "| " + " | ".join([*keys, "finished", "diverged", "failed", "reached target",
                              *present]) + " |",
           "|---" * (len(keys) + 4 + len(present)) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(
        [*(_cell(value_text(row["values"][k])) for k in keys),
         f"{row['finished']}/{row['runs']}", str(row["diverged"]), str(row["failed"]),
         str(row["reached_target"]), *(_fmt(row[c]) for c in present)]) + " |")
  lines += ["", *pivots(rows, keys, metric)]
  lines += ["## Runs", "", "| run | status | message |", "|---|---|---|"]
  for r in records:
    message = _cell(r.get("message") or "")[:200]
    lines.append(f"| {os.path.basename(r['run_dir'])} | {r['status']} | {message} |")
  with open(md, "w") as f:
    f.write("\n".join(lines) + "\n")
  path_csv = os.path.join(workdir, "results.csv")
  with open(path_csv, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([*keys, *COUNTS, *(f"{c}_{s}" for c in METRICS for s in ("mean", "std", "n"))])
    for row in rows:
      writer.writerow([*(value_text(row["values"][k]) for k in keys), *(row[c] for c in COUNTS),
                       *(v for c in METRICS for v in row[c])])
  return md, path_csv
