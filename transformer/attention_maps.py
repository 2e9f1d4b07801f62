"""Pictures of attention maps with the tokens on both axes (matplotlib, PNG files).

plot_maps         a grid, one row per layer (or run), one column per head, one colour bar
plot_probe_maps   the sweep's attention_maps.png: each run's probe example, one layer
plot_translation  decoder cross-attention of a translation, teacher-forced on its output
plot_patch_maps   a ViT's attention over the image patches, drawn on the image (image runs'
                  attention_maps.png in a sweep)

Query rows of decoder layers are labelled with the token each position predicts (the
target at that position; its input is the previous token, BOS first), so a
cross-attention row reads "to produce this token the decoder looked here".
"""

from __future__ import annotations

import functools
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from transformer import diagnostics
from transformer.config import TransformerConfig
from transformer.model import Transformer

PROBE_FILE = "attention_probe.npz"  # written by the training loop at each evaluation
MAX_LABELS = 40  # tick labels per axis; beyond, every k-th
SOURCE, TARGET = "source token", "decoder position (token it predicts)"
_SPECIAL_NAMES = {0: "<pad>", 1: "<s>", 2: "</s>"}  # the ids of every tokenizer here


class Row(NamedTuple):
  layer: str                           # 'decoder_1/cross_attention'
  weights_HTS: np.ndarray
  queries: Sequence[str] | None = None  # None: positions as labels
  keys: Sequence[str] | None = None
  name: str = ""                       # the run's label in a sweep


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
  """One label per id: specials by name, others decoded alone (blank ones quoted)."""
  out = []
  for i in np.asarray(ids).tolist():
    text = _SPECIAL_NAMES.get(i) or tokenizer.decode([i])
    out.append(text.strip() or repr(text))
  return out


def probe_tokens(tokenizer, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{'tokens/source', 'tokens/target'} of the first example, as `diagnostics.Probe` crops
  its maps (the first n positions, n its non-padding count); no source without inputs."""
  out = {}
  for key, name in (("inputs", "source"), ("targets", "target")):
    if batch.get(key) is not None:
      ids = np.asarray(batch[key][0])
      out[f"tokens/{name}"] = np.array(token_labels(tokenizer, ids[:np.sum(ids != 0)]), str)
  return out


def probe_image(vision, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """An image run's probe record: token labels ('cls', then each patch's 'row,column') as
  'tokens/source', the first image [H, W, C] in [-1, 1] and the patch size."""
  patches = [f"{r},{c}" for r in range(vision.grid) for c in range(vision.grid)]
  labels = (["cls"] if vision.pooling == "cls" else []) + patches
  return {"tokens/source": np.array(labels, str), "image/pixels": np.asarray(batch["images"][0]),
          "image/patch_size": np.asarray(vision.patch_size)}


class PatchRow(NamedTuple):
  image_HWC: np.ndarray                # in [-1, 1]
  weights_HTS: np.ndarray              # one encoder layer's self-attention, L = [CLS] + N or N
  patch_size: int
  layer: str = ""
  name: str = ""


def patch_attention(weights_HTS: np.ndarray, grid: int) -> np.ndarray:
  """[H, G, G]: where the [CLS] query looks, per head (its row over the patches); without a
  [CLS] token (global average pooling), the mean weight each patch receives."""
  n = grid * grid
  if weights_HTS.shape[-1] == n + 1:
    return weights_HTS[:, 0, 1:].reshape(-1, grid, grid)
  return weights_HTS.mean(axis=1).reshape(-1, grid, grid)


def plot_patch_maps(rows: Sequence[PatchRow], path: str, title: str = ""):
  """The image, then each head's `patch_attention` over it (one row per layer or run, one
  colour scale); returns the (closed) figure."""
  plt = pyplot()
  heads = max(r.weights_HTS.shape[0] for r in rows)
  fig, axes = plt.subplots(len(rows), heads + 1, squeeze=False, layout="constrained",
                           figsize=(1.9 * (heads + 1) + 1.0, 1.9 * len(rows) + 0.5))
  maps = []
  for r in rows:
    grid = r.image_HWC.shape[0] // r.patch_size
    maps.append(patch_attention(r.weights_HTS, grid))
  vmax = max(float(m.max()) for m in maps) or 1.0
  image = None
  for row, per_head, axes_row in zip(rows, maps, axes):
    pixels = np.clip((row.image_HWC + 1.0) / 2.0, 0.0, 1.0)
    shown = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    axes_row[0].imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    label = "\n".join(textwrap.wrap(row.name.replace(",", ", "), 28)) if row.name else ""
    axes_row[0].set_title(label or "image", fontsize=7)
    for h, ax in enumerate(axes_row[1:]):
      ax.set_xticks([])
      ax.set_yticks([])
      if h >= per_head.shape[0]:
        ax.axis("off")
        continue
      up = np.kron(per_head[h], np.ones((row.patch_size, row.patch_size)))  # patch -> pixels
      ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
      image = ax.imshow(up, cmap="inferno", vmin=0.0, vmax=vmax, alpha=0.65,
                        interpolation="nearest")
      ax.set_title(f"{row.layer}, head {h}", fontsize=7)
    axes_row[0].set_xticks([])
    axes_row[0].set_yticks([])
  return _finish(plt, fig, axes, image, "attention weight ([CLS] query)", title, path)


def _layer_order(name: str) -> tuple[str, int, str]:
  """'encoder_11/self_attention' -> ('encoder', 11, 'self_attention'): numeric layer order."""
  stack, _, rest = name.partition("/")
  kind, _, index = stack.rpartition("_")
  return (kind, int(index) if index.isdigit() else -1, rest)


def _axes_of(layer: str) -> tuple[str, str]:
  """(query axis, key axis) of a layer: encoder positions hold source tokens."""
  if layer.startswith("encoder"):
    return SOURCE, SOURCE
  return TARGET, SOURCE if "cross_attention" in layer else TARGET


def _labels(tokens: Sequence[str] | None, n: int, what: str) -> list[str]:
  if tokens is not None and len(tokens) != n:  # e.g. a probe file of another version
    logging.warning("%d %s tokens for %d positions; labelled by position", len(tokens), what, n)
    tokens = None
  return [str(i) for i in range(n)] if tokens is None else [str(t) for t in tokens]


def ticks(labels: Sequence[str]) -> tuple[list[int], list[str]]:
  """(positions, labels) shown: all up to MAX_LABELS, else every k-th."""
  every = max(1, math.ceil(len(labels) / MAX_LABELS))
  positions = list(range(0, len(labels), every))
  return positions, [labels[p] for p in positions]


def pyplot():
  import matplotlib  # noqa: PLC0415  (imported late: slow, and needs the Agg backend)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def plot_maps(rows: Sequence[Row], path: str, title: str = ""):
  """Draws the rows into `path` (PNG); returns the (closed) figure, for inspection."""
  plt = pyplot()
  heads = max(r.weights_HTS.shape[0] for r in rows)
  t = max(r.weights_HTS.shape[1] for r in rows)
  s = max(r.weights_HTS.shape[2] for r in rows)
  cell_w, cell_h = np.clip(0.12 * s + 1.4, 2.6, 6.5), np.clip(0.12 * t + 1.2, 2.4, 6.5)
  fig, axes = plt.subplots(len(rows), heads, squeeze=False, layout="constrained",
                           figsize=(cell_w * heads + 1.0, cell_h * len(rows) + 0.4))
  image = None
  for row, axes_row in zip(rows, axes):
    y_name, x_name = _axes_of(row.layer)
    queries = _labels(row.queries, row.weights_HTS.shape[1], "query")
    keys = _labels(row.keys, row.weights_HTS.shape[2], "key")
    for h, ax in enumerate(axes_row):
      if h >= row.weights_HTS.shape[0]:
        ax.axis("off")
        continue
      image = ax.imshow(row.weights_HTS[h], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                        interpolation="nearest")
      # parse_math=False: a token such as '$' is text, not the start of a formula
      ax.set_xticks(*ticks(keys), rotation=90, fontsize=6, parse_math=False)
      ax.set_yticks(*ticks(queries), fontsize=6, parse_math=False)
      ax.set_xlabel(x_name, fontsize=7)
      if h == 0:  # a run's name (a sweep point) is long: wrapped beside its row
        name = "\n".join(textwrap.wrap(row.name.replace(",", ", "), 28)) + "\n" if row.name else ""
        ax.set_ylabel(name + y_name, fontsize=7)
      ax.set_title(f"{row.layer}, head {h}", fontsize=7)
  return _finish(plt, fig, axes, image, "attention weight", title, path)


def _finish(plt, fig, axes, image, label: str, title: str | None, path: str):
  """One colour bar for all panels, the title, the file; returns the (closed) figure."""
  fig.colorbar(image, ax=axes, shrink=0.6, label=label)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return fig


def probe_row(path: str, name: str) -> Row | PatchRow:
  """The last encoder self-attention layer of a probe file (no encoder: the last layer)."""
  with np.load(path) as probe:
    layers = sorted((k for k in probe.files if not k.startswith(("tokens/", "image/"))),
                    key=_layer_order)
    layer = next((n for n in reversed(layers) if n.startswith("encoder")), layers[-1])
    tokens = {k.removeprefix("tokens/"): probe[k].tolist() for k in probe.files
              if k.startswith("tokens/")}  # absent in files of older runs
    if "image/pixels" in probe.files:  # an image run: its patches, drawn on the image
      return PatchRow(probe["image/pixels"], probe[layer], int(probe["image/patch_size"]), layer,
                      name)
    y_name, x_name = _axes_of(layer)
    side = {SOURCE: tokens.get("source"), TARGET: tokens.get("target")}
    return Row(layer, probe[layer], side[y_name], side[x_name], name)


def plot_probe_maps(records: list[dict[str, Any]], workdir: str) -> str | None:
  """WORKDIR/attention_maps.png: one row per distinct `name`, from its first run with a probe
  file; returns the path (None when no run has one). Image runs: the last encoder layer's
  attention over the probe image's patches (`plot_patch_maps`).

  Probe files are not committed with a study's records, so a rebuild on another machine may
  find only some of them: then an existing picture is kept rather than redrawn with fewer
  rows."""
  probes = {}  # name -> its first run's probe file, or None
  for name in dict.fromkeys(r["name"] for r in records):
    paths = [os.path.join(r["run_dir"], PROBE_FILE) for r in records if r["name"] == name]
    probes[name] = next((p for p in paths if os.path.exists(p)), None)
  missing = [name for name, path in probes.items() if path is None]
  out = os.path.join(workdir, "attention_maps.png")
  if missing and os.path.exists(out):
    logging.warning("%s kept: no %s for %s", out, PROBE_FILE, ", ".join(missing))
    return out
  rows = [probe_row(path, name) for name, path in probes.items() if path]
  if not rows:
    return None
  if all(isinstance(r, PatchRow) for r in rows):
    plot_patch_maps(rows, out, "The probe image's attention over its patches (last evaluation)")
  else:
    plot_maps([r for r in rows if isinstance(r, Row)], out,
              "The probe example's attention (last evaluation)")
  return out


@functools.lru_cache(maxsize=16)
def _cross_attention_fn(model_cfg: TransformerConfig):
  model = Transformer(model_cfg)

  def fn(params, inputs_BS, targets_BT):
    # Target segments of ones attend to every token the decoder emitted, pad included, as
    # cached decoding does; the source keeps its padding mask, as decoding does.
    layers = diagnostics.attention_layers(model, params, {
        "inputs": inputs_BS, "targets": targets_BT,
        "inputs_segment_ids": (inputs_BS != model_cfg.pad_id).astype(jnp.int32),
        "targets_segment_ids": jnp.ones_like(targets_BT)})
    return {entry[0]: entry[1][0] for entry in layers if entry[0].endswith("cross_attention")}

  return jax.jit(fn)


def cross_attention(model: Transformer, params: Any, source: np.ndarray, target: np.ndarray
                    ) -> dict[str, np.ndarray]:
  """{'decoder_i/cross_attention': weights [H, T, S]} of one teacher-forced pair (ids with
  EOS, no padding), in layer order; params on one device (`evaluation.device_params`)."""
  if model.config.decoder_only:
    raise ValueError("a decoder-only model has no cross-attention to draw")
  maps = _cross_attention_fn(model.config)(params, jnp.asarray(source, jnp.int32)[None],
                                           jnp.asarray(target, jnp.int32)[None])
  return {k: np.asarray(maps[k]) for k in sorted(maps, key=_layer_order)}


def plot_translation(run, params: Any, source: np.ndarray, output: np.ndarray, path: str,
                     title: str = ""):
  """Draws the cross-attention of every decoder layer for source ids (with EOS) and the
  model's output ids (without EOS, as `evaluation.translate_ids` returns them)."""
  target = np.append(np.asarray(output), run.model.config.eos_id)[:run.model.config.max_len]
  maps = cross_attention(run.model, params, source, target)
  src, tgt = token_labels(run.tokenizer, source), token_labels(run.tokenizer, target)
  return plot_maps([Row(layer, w, tgt, src) for layer, w in maps.items()], path, title)
