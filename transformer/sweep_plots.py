"""Pictures of a sweep (matplotlib Agg, small PNG files in the sweep directory).

loss_curves.png       training loss per grid point: mean over seeds, min-max band
attention_stats.png   attention entropy, max |logit| and the gradient norm reaching the
                      logits over training (probe batch)
METRIC_vs_KEY.png     for each numeric grid key: the final --metric against it, one line
                      per combination of the other keys, error bars = std over seeds
attention_at_init.png for a sweep over model.head_dim: the step-0 attention statistics
                      against d_k with the theory of the logit scale drawn in
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

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for n in names:
    for ax, pick in zip(axes, (lambda m: _attn_mean(m, "entropy_mean"),
                               lambda m: _attn_max(m, "max_abs_logit"),
                               lambda m: _attn_mean(m, "grad_norm_logits"))):
      curves = _curves(records, n, "attention", pick)
      if curves:
        _band(ax, curves, n, colors[n])
  axes[0].set(xlabel="step", ylabel="nats", title="Attention entropy (mean over layers, heads)")
  axes[1].set(xlabel="step", ylabel="|logit|", yscale="log",
              title="Max |attention logit| (over layers, heads)")
  axes[2].set(xlabel="step", ylabel="norm", yscale="log",
              title="Gradient reaching the logits (mean)")
  axes[0].legend(**legend)
  written.append(_save(fig, workdir, "attention_stats.png"))

  keys = grid_keys(records)
  short = labels(keys)
  for key in keys:
    path = _metric_against(plt, rows, keys, key, metric,
                           os.path.join(workdir, f"{metric}_vs_{short[key]}.png"))
    if path:
      written.append(path)

  if "model.head_dim" in keys:
    written.append(_at_init(plt, records, keys, workdir))
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
    label = _label(others, combo)
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
    ax.legend(fontsize=8, title=_legend_title(others), title_fontsize=8)
  return _save(fig, os.path.dirname(path), os.path.basename(path))


def _label(keys: list[str], combo: tuple) -> str | None:
  """A legend entry: the values alone for one axis (the legend's title names it)."""
  if len(keys) == 1:
    return value_text(combo[0])
  short = labels(keys)
  return ", ".join(f"{short[k]}={value_text(v)}" for k, v in zip(keys, combo)) or None


def _legend_title(keys: list[str]) -> str | None:
  return labels(keys)[keys[0]] if len(keys) == 1 else None


# Unscaled, q . k over d_k terms of unit-variance products has std ~ sqrt(d_k) (§3.2.1,
# footnote 4): a scale policy's factor s(d_k) makes it c sqrt(d_k) s(d_k).
LOGIT_STD_EXPONENT = {"none": 0.5, "inv_sqrt_dk": 0.0, "inv_dk": -0.5}
INIT_STATS = (("logit_std", "logit std", "log"), ("entropy_mean", "entropy (nats)", "linear"),
              ("grad_norm_logits", "|dL/dlogits|", "log"),
              ("grad_norm_query", "|dL/dW^Q|", "log"), ("grad_norm_key", "|dL/dW^K|", "log"))


def init_statistics(records: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
  """One line per combination of the axes other than model.head_dim: its label, the
  theory's exponent of d_k in the logit std (None where there is none) and, per statistic
  of INIT_STATS, (d_k values, mean, std over seeds) at step 0, mean over layers and sites."""
  others = [k for k in keys if k != "model.head_dim"]
  lines = []
  for combo in dict.fromkeys(tuple(r["axes"][k] for k in others) for r in records):
    runs = [r for r in records if tuple(r["axes"][k] for k in others) == combo]
    model = (runs[0].get("config") or {}).get("model", {})
    line = {"label": _label(others, combo), "stats": {},
            "exponent": (LOGIT_STD_EXPONENT.get(model.get("attention_scale"))
                         if model.get("attention_kind") == "dot_product" else None)}
    firsts = []
    for r in runs:
      first = [m for m in run_metrics(r["run_dir"]) if m["split"] == "attention"][:1]
      if first and first[0]["step"] == 0:
        firsts.append((r["axes"]["model.head_dim"], first[0]))
    for stat, _, _ in INIT_STATS:
      by_dk: dict[float, list[float]] = {}
      for d_k, m in firsts:
        value = _attn_mean(m, stat)
        if value is not None:
          by_dk.setdefault(d_k, []).append(value)
      x = sorted(by_dk)
      line["stats"][stat] = (np.array(x, np.float64),
                             np.array([np.mean(by_dk[d]) for d in x]),
                             np.array([np.std(by_dk[d], ddof=1) if len(by_dk[d]) > 1 else 0.0
                                       for d in x]))
    lines.append(line)
  return lines


def theory_constant(lines: list[dict[str, Any]]) -> float | None:
  """c of logit std = c d_k^e, fitted in log space to every point of the lines with a
  theory: log c = mean(log std - e log d_k)."""
  logs = [np.log(l["stats"]["logit_std"][1]) - l["exponent"] * np.log(l["stats"]["logit_std"][0])
          for l in lines if l["exponent"] is not None and l["stats"]["logit_std"][0].size]
  return float(np.exp(np.mean(np.concatenate(logs)))) if logs else None


def _at_init(plt, records: list[dict[str, Any]], keys: list[str], workdir: str) -> str:
  """Step-0 statistics against d_k, a line per combination of the other axes, error bars
  over seeds; dashed on the logit std: the theory c d_k^e, one c for all lines."""
  lines = init_statistics(records, keys)
  c = theory_constant(lines)
  fig, axes = plt.subplots(1, len(INIT_STATS), figsize=(3.4 * len(INIT_STATS), 3.6))
  cmap = plt.get_cmap("tab10")
  for i, line in enumerate(lines):
    for ax, (stat, _, _) in zip(axes, INIT_STATS):
      x, mean, std = line["stats"][stat]
      if x.size:
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, color=cmap(i % 10),
                    label=line["label"])
    x = line["stats"]["logit_std"][0]
    if c is not None and line["exponent"] is not None and x.size:
      axes[0].plot(x, c * x ** line["exponent"], "--", color=cmap(i % 10), alpha=0.7)
  if c is not None:
    axes[0].plot([], [], "k--", label=f"theory {c:.2g} sqrt(d_k) s(d_k)")
  for ax, (_, title, yscale) in zip(axes, INIT_STATS):
    ax.set(xlabel="d_k (model.head_dim)", title=f"{title} at step 0", yscale=yscale)
    ax.set_xscale("log", base=2)
  others = [k for k in keys if k != "model.head_dim"]
  handles, names = axes[0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=8,
             title=_legend_title(others) if others else None, title_fontsize=8)
  fig.tight_layout(rect=(0, 0.1 + 0.04 * (len(names) > 6), 1, 1))
  return _save(fig, workdir, "attention_at_init.png", layout=False)


def _attention_maps(records: list[dict[str, Any]], workdir: str) -> str | None:
  return attention_maps.plot_probe_maps(records, workdir)  # one row per name: per point


def _save(fig, workdir: str, name: str, layout: bool = True) -> str:
  path = os.path.join(workdir, name)
  if layout:
    fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  import matplotlib.pyplot as plt  # noqa: PLC0415
  plt.close(fig)
  return path
