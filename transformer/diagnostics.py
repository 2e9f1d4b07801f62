"""Attention diagnostics for the scale ablation, per layer and head, on a probe batch.

Statistics (B batch, H heads, T queries, S keys; masked keys and fully masked query
rows, both read from the attention mask, are excluded):
  entropy_mean / entropy_min   entropy of each query's attention distribution (nats)
  max_abs_logit / logit_std    of the logits (dot-product: q.k * scale; additive: w.tanh(q+k))
  saturation                   share of query rows whose largest weight exceeds 0.99
  grad_norm_logits             norm of the gradient reaching the logits (§3.2.1's "extremely
                               small gradients" when the softmax saturates)
  grad_norm_query / _key       gradient norm reaching W^Q / W^K of each head

At initialisation, with unit-variance inputs to the projections, logit_std^2 is about
d_k without scaling and about 1 with 1/sqrt(d_k) (§3.2.1's argument).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer import step
from transformer.model import model_inputs

SATURATION_THRESHOLD = 0.99


def attention_stats(weights_BHTS: Array, logits_BHTS: Array | None = None,
                    mask_BHTS: Array | None = None) -> dict[str, Array]:
  """Per-head statistics [H] of one attention layer (module docstring)."""
  w = weights_BHTS.astype(jnp.float32)
  if mask_BHTS is not None:
    w = jnp.where(mask_BHTS, w, 0.0)
    row_ok_BHT = jnp.any(mask_BHTS, axis=-1)
  else:
    row_ok_BHT = jnp.ones(w.shape[:-1], bool)
  n_rows_H = jnp.maximum(jnp.sum(row_ok_BHT, axis=(0, 2)), 1)
  entropy_BHT = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), axis=-1)
  stats = {
      "entropy_mean": jnp.sum(jnp.where(row_ok_BHT, entropy_BHT, 0.0), axis=(0, 2)) / n_rows_H,
      "entropy_min": jnp.min(jnp.where(row_ok_BHT, entropy_BHT, jnp.inf), axis=(0, 2)),
      "saturation": jnp.sum(row_ok_BHT & (jnp.max(w, axis=-1) > SATURATION_THRESHOLD),
                            axis=(0, 2)) / n_rows_H,
  }
  if logits_BHTS is not None:
    logits = logits_BHTS.astype(jnp.float32)
    if mask_BHTS is not None:
      logits = jnp.where(mask_BHTS, logits, jnp.nan)
    per_head = jnp.moveaxis(logits, 1, 0).reshape(logits.shape[1], -1)
    stats["max_abs_logit"] = jnp.nanmax(jnp.abs(per_head), axis=-1)
    stats["logit_std"] = jnp.nanstd(per_head, axis=-1)
  return stats


def attention_modules(tree: Mapping[str, Any], marker: str, path: tuple[str, ...] = (),
                      scanned: bool = False) -> Iterator[tuple[str, Any]]:
  """(layer name, subtree) of every attention module in a params, gradient,
  intermediates or perturbations tree; the module is the dict holding key `marker`.

  Names are 'encoder_0/self_attention', 'decoder_1/cross_attention', ...; stacks of
  nn.scan (leading layer axis under 'layers/layer') are split into their layers.
  """
  if marker in tree:
    if not scanned:
      yield "/".join(p for p in path if p not in ("encoder", "decoder")), tree
      return
    for i in range(jax.tree.leaves(tree)[0].shape[0]):
      yield f"{path[0]}_{i}/{path[-1]}", jax.tree.map(lambda x, i=i: x[i], tree)
    return
  for key, value in tree.items():
    if isinstance(value, Mapping):
      if key in ("layers", "layer"):
        yield from attention_modules(value, marker, path, True)
      else:
        yield from attention_modules(value, marker, path + (key,), scanned)


def _head_norms(module_grads: Mapping[str, Any], proj: str) -> Array:
  """Per-head gradient norm [H] of W^Q or W^K (kernel [M, H, D], bias [H, D] if any)."""
  sq_H = jnp.sum(jnp.square(module_grads[proj]["kernel"]), axis=(0, 2))
  if "bias" in module_grads[proj]:   # absent with attention_bias=False
    sq_H = sq_H + jnp.sum(jnp.square(module_grads[proj]["bias"]), axis=-1)
  return jnp.sqrt(sq_H)


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


def _probe_state(model, params, batch: Mapping[str, Array]) -> dict[str, Any]:
  """The sown intermediates and the zero logit perturbations of a deterministic pass."""
  _, state = model.apply({"params": params}, **model_inputs(batch), deterministic=True,
                         mutable=["intermediates", "perturbations"])
  return state


def _layers(state: Mapping[str, Any]) -> list[tuple[str, Array, Array, Array]]:
  return [(name, m["attention_weights"][0], m["attention_logits"][0], m["attention_mask"][0])
          for name, m in attention_modules(state["intermediates"], "attention_weights")]


def attention_layers(model, params, batch: Mapping[str, Array]):
  """[(name, weights, logits, mask)] of every attention layer, each [B, H, T, S]."""
  return _layers(_probe_state(model, params, batch))


class Probe:
  """The diagnostics of a fixed probe batch, jit-compiled once; used by the training loop.

  The gradient norms are those of the unsmoothed per-token cross-entropy of the batch.
  """

  def __init__(self, model, batch: Mapping[str, np.ndarray], rows: int = 4):
    keys = {*model_inputs(batch), "targets", "targets_segment_ids"}  # the model's and the loss's
    self.batch = {k: jnp.asarray(batch[k][:rows]) for k in keys if batch.get(k) is not None}

    def loss_fn(params, perturbations):
      sums = step.loss_sums(model, params, self.batch, label_smoothing=0.0,
                            perturbations=perturbations)
      return sums["nll_sum"] / jnp.maximum(sums["token_count"], 1.0)

    def run(params):
      state = _probe_state(model, params, self.batch)
      layers, zeros = _layers(state), state["perturbations"]
      stats = {name: attention_stats(w, l, m) for name, w, l, m in layers}
      grads, logit_grads = jax.grad(loss_fn, argnums=(0, 1))(params, zeros)
      for name, g in attention_modules(logit_grads, "attention_logits"):
        stats[name]["grad_norm_logits"] = jnp.sqrt(
            jnp.sum(jnp.square(g["attention_logits"]), axis=(0, 2, 3)))
      for name, g in attention_modules(grads, "query"):
        stats[name].update(grad_norm_query=_head_norms(g, "query"),
                           grad_norm_key=_head_norms(g, "key"))
      return stats, {name: w[0] for name, w, _, _ in layers}  # maps of the first example

    self._run = jax.jit(run)

  def __call__(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(flat statistics for metrics.jsonl, {layer: weights [H, T, S]} of the first example)."""
    stats, maps = self._run(params)
    return flatten(stats), {name: self._crop(name, np.asarray(w)) for name, w in maps.items()}

  def _crop(self, name: str, weights_HTS: np.ndarray) -> np.ndarray:
    """Drops padding rows/columns: queries and keys of the first example only."""
    if "images" in self.batch:  # every patch is a token: nothing to drop
      return weights_HTS
    n_src = int(np.sum(np.asarray(self.batch["inputs"][0]) != 0)) if "inputs" in self.batch else 0
    n_tgt = int(np.sum(np.asarray(self.batch["targets"][0]) != 0))
    t = n_src if name.startswith("encoder") else n_tgt
    s = n_tgt if "self_attention" in name and name.startswith("decoder") else (n_src or n_tgt)
    return weights_HTS[:, :t, :s]
