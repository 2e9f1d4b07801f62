"""Pictures of an attention-scale sweep (matplotlib, written as PNG files).

loss_curves.png      training loss per policy: mean over seeds, min-max band
attention_stats.png  attention entropy and max |logit| over training (probe batch)
attention_maps.png   the probe example's attention per head, one row per policy
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from transformer.sweep import run_metrics

PROBE_FILE = "attention_probe.npz"  # written by the training loop at its last evaluation


def _pyplot():
  import matplotlib  # noqa: PLC0415  (imported late: slow, and needs the Agg backend)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def _curves(records: list[dict[str, Any]], policy: str, split: str, pick) -> list[tuple]:
  """[(steps, values)] of the policy's runs, one per seed, for records of `split`."""
  out = []
  for r in records:
    if r["policy"] != policy:
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


def plot_sweep(records: list[dict[str, Any]], workdir: str) -> list[str]:
  """Writes the pictures; returns their paths."""
  plt = _pyplot()
  policies = list(dict.fromkeys(r["policy"] for r in records))
  colors = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(policies)}
  written = []

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for p in policies:
    curves = _curves(records, p, "train", lambda m: m.get("loss"))
    if curves:
      _band(ax, curves, p, colors[p])
  ax.set(xlabel="step", ylabel="training loss (label-smoothed)", yscale="log",
         title="Training loss by attention scale (band: min-max over seeds)")
  ax.legend(fontsize=8)
  written.append(_save(fig, workdir, "loss_curves.png"))

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for p in policies:
    entropy = _curves(records, p, "attention", lambda m: _attn_mean(m, "entropy_mean"))
    max_logit = _curves(records, p, "attention",
                        lambda m: _attn_max(m, "max_abs_logit"))
    if entropy:
      _band(axes[0], entropy, p, colors[p])
    if max_logit:
      _band(axes[1], max_logit, p, colors[p])
  axes[0].set(xlabel="step", ylabel="nats", title="Attention entropy (mean over layers, heads)")
  axes[1].set(xlabel="step", ylabel="|logit|", yscale="log",
              title="Max |attention logit| (over layers, heads)")
  axes[0].legend(fontsize=8)
  written.append(_save(fig, workdir, "attention_stats.png"))

  maps = _probe_maps(records, policies)
  if maps:
    layer = maps[0][2]
    heads = max(w.shape[0] for _, w, _ in maps)
    fig, axes = plt.subplots(len(maps), heads, figsize=(max(2.6 * heads + 1, 6.0),
                                                        2.4 * len(maps)), squeeze=False)
    for row, (p, weights, _) in enumerate(maps):
      for h in range(heads):
        ax = axes[row][h]
        ax.set_xticks([])
        ax.set_yticks([])
        if h < weights.shape[0]:
          ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        if h == 0:
          ax.set_ylabel(p, fontsize=8)
        if row == 0:
          ax.set_title(f"head {h}", fontsize=8)
    fig.suptitle(f"Probe example, {layer}\n(rows: queries, columns: keys)", fontsize=9)
    written.append(_save(fig, workdir, "attention_maps.png"))
  return written


def _probe_maps(records, policies) -> list[tuple[str, np.ndarray, str]]:
  """(policy, weights [H, T, S], layer) from each policy's first run with a probe file."""
  maps = []
  for p in policies:
    for r in records:
      path = os.path.join(r["run_dir"], PROBE_FILE)
      if r["policy"] == p and os.path.exists(path):
        with np.load(path) as probe:
          names = sorted(probe.files, key=_layer_order)
          layer = next((n for n in reversed(names) if n.startswith("encoder")), names[-1])
          maps.append((p, probe[layer], layer))
        break
  return maps


def _layer_order(name: str) -> tuple[str, int, str]:
  """'encoder_11/self_attention' -> ('encoder', 11, 'self_attention'): numeric layer order."""
  stack, _, rest = name.partition("/")
  kind, _, index = stack.rpartition("_")
  return (kind, int(index) if index.isdigit() else -1, rest)


def _save(fig, workdir: str, name: str) -> str:
  path = os.path.join(workdir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  import matplotlib.pyplot as plt  # noqa: PLC0415
  plt.close(fig)
  return path
