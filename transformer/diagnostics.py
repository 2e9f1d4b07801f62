"""Attention diagnostics for the scale ablation, per layer and head, on a probe batch.

Statistics (B batch, H heads, T queries, S keys; masked keys and fully masked query
rows are excluded):
  entropy_mean / entropy_min   entropy of each query's attention distribution (nats)
  max_abs_logit / logit_std    of the scaled logits q.k * scale
  saturation                   share of query rows whose largest weight exceeds 0.99
  grad_norm_query / _key       gradient norm reaching W^Q / W^K of each head

At initialisation, with unit-variance inputs to the projections, logit_std^2 is about
d_k without scaling and about 1 with 1/sqrt(d_k) (§3.2.1's argument).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer import step
from transformer.model import model_inputs

SATURATION_THRESHOLD = 0.99


def attention_stats(weights_BHTS: Array, logits_BHTS: Array | None = None) -> dict[str, Array]:
  """Per-head statistics [H] of one attention layer (module docstring)."""
  w = weights_BHTS.astype(jnp.float32)
  row_ok_BHT = jnp.sum(w, axis=-1) > 0.5  # fully masked rows have all-zero weights
  n_rows_H = jnp.maximum(jnp.sum(row_ok_BHT, axis=(0, 2)), 1)
  entropy_BHT = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), axis=-1)
  stats = {
      "entropy_mean": jnp.sum(jnp.where(row_ok_BHT, entropy_BHT, 0.0), axis=(0, 2)) / n_rows_H,
      "entropy_min": jnp.min(jnp.where(row_ok_BHT, entropy_BHT, jnp.inf), axis=(0, 2)),
      "saturation": jnp.sum(row_ok_BHT & (jnp.max(w, axis=-1) > SATURATION_THRESHOLD),
                            axis=(0, 2)) / n_rows_H,
  }
  if logits_BHTS is not None:
    per_head = jnp.moveaxis(logits_BHTS.astype(jnp.float32), 1, 0).reshape(
        logits_BHTS.shape[1], -1)
    stats["max_abs_logit"] = jnp.nanmax(jnp.abs(per_head), axis=-1)
    stats["logit_std"] = jnp.nanstd(per_head, axis=-1)
  return stats


def _attention_layers(intermediates: Mapping[str, Any], prefix: str = ""):
  """Yields (name, weights, logits) for every attention layer sown in `intermediates`.

  Layers stacked by nn.scan ([N, B, H, T, S]) are split into N named layers.
  """
  if "attention_weights" in intermediates:
    weights = intermediates["attention_weights"][0]
    logits = intermediates.get("attention_logits", (None,))[0]
    if weights.ndim == 5:  # scanned: leading layer axis
      base, _, kind = prefix.rpartition("/")
      stack = base.split("/")[0]
      for i in range(weights.shape[0]):
        yield (f"{stack}_{i}/{kind}", weights[i], None if logits is None else logits[i])
    else:
      yield prefix, weights, logits
    return
  for key, value in intermediates.items():
    if isinstance(value, Mapping):  # nn.scan's 'layers/layer' levels add nothing to the name
      name = prefix if key in ("layers", "layer") else (f"{prefix}/{key}" if prefix else key)
      yield from _attention_layers(value, name)


def _short(name: str) -> str:
  """'encoder/encoder_0/self_attention' -> 'encoder_0/self_attention'."""
  parts = [p for p in name.split("/") if p not in ("encoder", "decoder")]
  return "/".join(parts)


def _apply_probe(model, params, batch: Mapping[str, Array]):
  _, state = model.apply({"params": params}, **model_inputs(batch), deterministic=True,
                         mutable=["intermediates"])
  return [(_short(name), w, l) for name, w, l in _attention_layers(state["intermediates"])]


def qk_gradient_norms(grads: Mapping[str, Any]) -> dict[str, dict[str, Array]]:
  """{layer name: {'grad_norm_query': [H], 'grad_norm_key': [H]}} from a gradient tree.

  Kernels are [M, H, D] (or [N, M, H, D] when layers are scanned); each head's norm
  covers its kernel slice and bias (if any).
  """
  out: dict[str, dict[str, Array]] = {}

  def visit(tree, prefix):
    if "query" in tree and "key" in tree and "out" in tree:
      for proj in ("query", "key"):
        sq = jnp.sum(jnp.square(tree[proj]["kernel"]), axis=-1).sum(axis=-2)
        if "bias" in tree[proj]:   # absent with attention_bias=False
          sq = sq + jnp.sum(jnp.square(tree[proj]["bias"]), -1)
        if sq.ndim == 2:  # scanned: [N, H]
          stack, _, kind = prefix.rpartition("/")
          for i in range(sq.shape[0]):
            out.setdefault(_short(f"{stack.split('/')[0]}_{i}/{kind}"), {})[
                f"grad_norm_{proj}"] = jnp.sqrt(sq[i])
        else:
          out.setdefault(_short(prefix), {})[f"grad_norm_{proj}"] = jnp.sqrt(sq)
      return
    for key, value in tree.items():
      if isinstance(value, Mapping):
        name = prefix if key in ("layers", "layer") else (f"{prefix}/{key}" if prefix else key)
        visit(value, name)

  visit(grads, "")
  return out


def flatten(stats: Mapping[str, Mapping[str, Array]], prefix: str = "attn") -> dict[str, float]:
  """{'attn/decoder_0/cross_attention/entropy_mean/h0': 1.2, ..., '.../mean': ...}."""
  flat: dict[str, float] = {}
  for layer, values in stats.items():
    for stat, per_head in values.items():
      per_head = np.asarray(per_head, np.float64)
      for h, value in enumerate(per_head):
        flat[f"{prefix}/{layer}/{stat}/h{h}"] = float(value)
      flat[f"{prefix}/{layer}/{stat}/mean"] = float(per_head.mean())
  return flat


class Probe:
  """The diagnostics of a fixed probe batch, jit-compiled once; used by the training loop.

  The gradient norms are those of the unsmoothed cross-entropy of the probe batch.
  """

  def __init__(self, model, batch: Mapping[str, np.ndarray], rows: int = 4):
    self.batch = {k: jnp.asarray(v[:rows]) for k, v in model_inputs(batch).items()
                  if v is not None}

    def loss_fn(params):
      sums = step.loss_sums(model, params, self.batch, label_smoothing=0.0)
      return sums["nll_sum"] / jnp.maximum(sums["token_count"], 1.0)

    def run(params):
      layers = _apply_probe(model, params, self.batch)
      stats = {name: attention_stats(w, l) for name, w, l in layers}
      for name, norms in qk_gradient_norms(jax.grad(loss_fn)(params)).items():
        stats.setdefault(name, {}).update(norms)
      return stats, {name: w[0] for name, w, _ in layers}  # maps of the first example

    self._run = jax.jit(run)

  def __call__(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(flat statistics for metrics.jsonl, {layer: weights [H, T, S]} of the first example)."""
    stats, maps = self._run(params)
    return flatten(stats), {name: self._crop(name, np.asarray(w)) for name, w in maps.items()}

  def _crop(self, name: str, weights_HTS: np.ndarray) -> np.ndarray:
    """Drops padding rows/columns: queries and keys of the first example only."""
    n_src = int(np.sum(np.asarray(self.batch["inputs"][0]) != 0)) if "inputs" in self.batch else 0
    n_tgt = int(np.sum(np.asarray(self.batch["targets"][0]) != 0))
    t = n_src if name.startswith("encoder") else n_tgt
    s = n_tgt if "self_attention" in name and name.startswith("decoder") else (n_src or n_tgt)
    return weights_HTS[:, :t, :s]
