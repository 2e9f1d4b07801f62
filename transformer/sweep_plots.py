"""Pictures of a sweep (matplotlib Agg, small PNG files in the sweep directory).

loss_curves.png       training loss per grid point: mean over seeds, min-max band
attention_stats.png   attention entropy and max |logit| over training (probe batch)
METRIC_vs_KEY.png     for each numeric grid key: the final --metric against it, one line
                      per combination of the other keys, error bars = std over seeds
attention_maps.png    the probe example's attention per head, one row per grid point
                      (`transformer.attention_maps`)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from transformer import attention_maps
from transformer.sweep_grid import labels, value_text
from transformer.sweep_tables import grid_keys, run_metrics

DPI = 100


def _curves(records: list[dict[str, Any]], name: str, split: str, pick) -> list[tuple]:
  """[(steps, values)] of a grid point's runs, one per seed, for records of `split`."""
  out = []
  for r in records:
    if r["name"] != name:
      continue
    points = [(m["step"], pick(m)) for m in run_metrics(r["run_dir"]) if m["split"] == split]
    points = [(s, v) for s, v in points if v is not None and np.isfinite(v)]
    if points:
      out.append(tuple(np.array(x, np.float64) for x in zip(*points)))
  return out


def _band(ax, curves: list[tuple], label: str, color) -> None:
  """Mean line with a min-max band over seeds (on the steps all seeds logged)."""
  common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
  if not common:
    return
  values = np.stack([np.interp(common, s, v) for s, v in curves])
  ax.plot(common, values.mean(0), color=color, label=f"{label} (n={len(curves)})")
  if len(curves) > 1:
    ax.fill_between(common, values.min(0), values.max(0), color=color, alpha=0.2)


def _attn_mean(metrics_record: dict[str, Any], stat: str) -> float | None:
  """The statistic's mean over all layers and heads of one record."""
  values = [v for k, v in metrics_record.items()
            if k.startswith("attn/") and k.endswith(f"/{stat}/mean")]
  return float(np.mean(values)) if values else None


def _attn_max(metrics_record: dict[str, Any], stat: str) -> float | None:
  """The statistic's maximum over all layers and heads of one record."""
  values = [v for k, v in metrics_record.items()
            if k.startswith("attn/") and f"/{stat}/h" in k]
  return float(np.max(values)) if values else None


def plot_sweep(records: list[dict[str, Any]], rows: list[dict[str, Any]], workdir: str,
               metric: str = "eval_loss") -> list[str]:
  """Writes the pictures (`rows`: `sweep_tables.summarize`); returns their paths."""
  plt = attention_maps.pyplot()
  names = list(dict.fromkeys(r["name"] for r in records))  # one per grid point
  cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
  colors = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
  legend = dict(fontsize=7 if len(names) > 6 else 8)
  written = []

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for n in names:
    curves = _curves(records, n, "train", lambda m: m.get("loss"))
    if curves:
      _band(ax, curves, n, colors[n])
  ax.set(xlabel="step", ylabel="training loss (label-smoothed)", yscale="log",
         title="Training loss per grid point (band: min-max over seeds)")
  ax.legend(**legend)
  written.append(_save(fig, workdir, "loss_curves.png"))

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for n in names:
    entropy = _curves(records, n, "attention", lambda m: _attn_mean(m, "entropy_mean"))
    max_logit = _curves(records, n, "attention", lambda m: _attn_max(m, "max_abs_logit"))
    if entropy:
      _band(axes[0], entropy, n, colors[n])
    if max_logit:
      _band(axes[1], max_logit, n, colors[n])
  axes[0].set(xlabel="step", ylabel="nats", title="Attention entropy (mean over layers, heads)")
  axes[1].set(xlabel="step", ylabel="|logit|", yscale="log",
              title="Max |attention logit| (over layers, heads)")
  axes[0].legend(**legend)
  written.append(_save(fig, workdir, "attention_stats.png"))

  keys = grid_keys(records)
  short = labels(keys)
  for key in keys:
    path = _metric_against(plt, rows, keys, key, metric,
                           os.path.join(workdir, f"{metric}_vs_{short[key]}.png"))
    if path:
      written.append(path)

  maps = _attention_maps(records, workdir)
  if maps:
    written.append(maps)
  return written


def _numeric(values: list[Any]) -> list[float]:
  return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def log_base(xs: list[float]) -> int | None:
  """The base of a log axis for these values, or None for a linear one: all powers of one
  integer base (2 for 32, 64, 128), else 10 where they span more than 30x."""
  xs = np.asarray(xs, np.float64)
  if xs.size < 2 or np.any(xs <= 0):
    return None
  for base in range(2, 11):
    exponents = np.log(xs) / np.log(base)
    if np.allclose(exponents, np.round(exponents), rtol=0, atol=1e-9):
      return base
  return 10 if xs.max() / xs.min() > 30 else None


def _metric_against(plt, rows: list[dict[str, Any]], keys: list[str], key: str, metric: str,
                    path: str) -> str | None:
  """`metric` against a numeric grid key, one line per combination of the other keys."""
  xs = sorted(set(_numeric([r["values"][key] for r in rows])))
  if len(xs) < 2:
    return None
  others = [k for k in keys if k != key]
  combos = list(dict.fromkeys(tuple(r["values"][k] for k in others) for r in rows))
  fig, ax = plt.subplots(figsize=(6, 4.2))
  plotted = 0
  for i, combo in enumerate(combos):
    line = sorted((r["values"][key], *r[metric][:2]) for r in rows
                  if tuple(r["values"][k] for k in others) == combo
                  and r["values"][key] in xs and r[metric][2] > 0)
    if not line:
      continue
    x, mean, std = zip(*line)
    label = ", ".join(f"{k}={value_text(v)}" for k, v in zip(others, combo)) or None
    ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label,
                color=plt.get_cmap("tab10")(i % 10))
    plotted += 1
  if not plotted:
    plt.close(fig)
    return None
  base = log_base(xs)
  if base:
    ax.set_xscale("log", base=base)
  ax.set_xticks(xs, [value_text(x) for x in xs])
  ax.minorticks_off()
  ax.set(xlabel=key, ylabel=f"final {metric} (mean ± std over seeds)",
         title=f"Final {metric} against {key}")
  if others:
    ax.legend(fontsize=8)
  return _save(fig, os.path.dirname(path), os.path.basename(path))


def _attention_maps(records: list[dict[str, Any]], workdir: str) -> str | None:
  return attention_maps.plot_probe_maps(records, workdir)  # one row per name: per point


def _save(fig, workdir: str, name: str) -> str:
  path = os.path.join(workdir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  import matplotlib.pyplot as plt  # noqa: PLC0415
  plt.close(fig)
  return path
