"""Label-smoothed cross-entropy and the metrics of a batch, as sums.

Shape legend: B batch, T target length, V vocabulary.

Everything here returns *sums* (of loss, correct tokens, weights...) rather than
means, so that devices, hosts, micro-batches and eval batches combine exactly by
adding, and the ratio is taken once at the end (`summarize`). The softmax runs in
float32 whatever the activation dtype: the model already returns float32 logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array


def cross_entropy(logits_BTV: Array, targets_BT: Array,
                  label_smoothing: float) -> tuple[Array, Array]:
  """Per-token (smoothed loss, nll), [B, T] float32 each (§5.4, epsilon_ls).

  With z the logits, y the true token and log Z = logsumexp(z), the smoothed target
  (1 - eps on y plus eps/V on every token, as optax.smooth_labels) gives

      loss = log Z - (1 - eps) z_y - eps mean(z)        nll = log Z - z_y

  The loss is bounded below by the target's entropy, not by 0; perplexity uses nll.
  Written with z_y picked out rather than as a sum against a one-hot target: the
  gradient is then one pass over [B, T, V] (softmax minus the target), which made the
  Multi30k step ~12% faster on CPU (BUILD_NOTES, issue 16).
  """
  logits_BTV = logits_BTV.astype(jnp.float32)
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  true_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  nll_BT = log_z_BT - true_BT
  if not label_smoothing:
    return nll_BT, nll_BT
  loss_BT = (log_z_BT - (1.0 - label_smoothing) * true_BT
             - label_smoothing * jnp.mean(logits_BTV, axis=-1))
  return loss_BT, nll_BT


def target_weights(targets_BT: Array, segment_ids_BT: Array | None = None,
                   pad_id: int = 0) -> Array:
  """1.0 on real target tokens, 0.0 on padding (segment id 0, or pad_id without segments)."""
  if segment_ids_BT is not None:
    return (segment_ids_BT != 0).astype(jnp.float32)
  return (targets_BT != pad_id).astype(jnp.float32)


def sequence_exact_match(correct_BT: Array, weights_BT: Array,
                         segments_BT: Array | None) -> tuple[Array, Array]:
  """(number of sequences predicted entirely right, number of sequences).

  A packed row holds several sequences; each (row, segment id) pair is one
  sequence, counted with a segment_sum over row-offset segment ids, so the cost
  stays O(B*T) however many sequences a row holds.
  """
  batch, length = correct_BT.shape
  if segments_BT is None:
    segments_BT = (weights_BT > 0).astype(jnp.int32)
  row_B1 = jnp.arange(batch, dtype=jnp.int32)[:, None]
  ids_BT = (row_B1 * (length + 1) + segments_BT.astype(jnp.int32)).reshape(-1)
  num = batch * (length + 1)
  present = jax.ops.segment_sum(weights_BT.reshape(-1), ids_BT, num_segments=num)
  wrong = jax.ops.segment_sum((weights_BT * (1.0 - correct_BT)).reshape(-1), ids_BT,
                              num_segments=num)
  is_sequence = (present > 0) & (jnp.arange(num) % (length + 1) != 0)  # segment 0 = padding
  exact = is_sequence & (wrong == 0)
  # One reduction for both counts (integers: the order of summation cannot matter).
  counts = jnp.stack([exact, is_sequence]).astype(jnp.float32).sum(axis=1)
  return counts[0], counts[1]


def batch_metric_sums(logits_BTV: Array, targets_BT: Array, weights_BT: Array,
                      segments_BT: Array | None = None,
                      label_smoothing: float = 0.1) -> dict[str, Array]:
  """Sums over the batch: loss (smoothed), nll, correct tokens, tokens, exact sequences.

  `weights_BT` masks padding (and, in eval, the pad rows a batch was filled with).
  """
  loss_BT, nll_BT = cross_entropy(logits_BTV, targets_BT, label_smoothing)
  correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
  exact, sequences = sequence_exact_match(correct_BT, weights_BT, segments_BT)
  return {
      "loss_sum": (loss_BT * weights_BT).sum(),
      "nll_sum": (nll_BT * weights_BT).sum(),
      "correct_sum": (correct_BT * weights_BT).sum(),
      "token_count": weights_BT.sum(),
      "exact_sum": exact,
      "sequence_count": sequences,
  }


def summarize(sums: Mapping[str, float | np.ndarray], unit: str | None = None
              ) -> dict[str, float]:
  """Ratios of accumulated sums: loss, accuracy, perplexity, exact_match (+ passthrough).

  With `unit` ('char', 'byte': text whose tokens are its characters or bytes), also
  `bits_per_{unit}`, the unsmoothed nll in bits (a document-end token counts as one unit).
  Keys that are not sums (e.g. learning_rate, grad_norm, already averaged) pass through.
  """
  sums = {k: float(v) for k, v in sums.items()}
  tokens = max(sums.get("token_count", 0.0), 1e-9)
  out: dict[str, float] = {}
  if "loss_sum" in sums:
    out["loss"] = sums["loss_sum"] / tokens
    out["nll"] = sums["nll_sum"] / tokens
    # Perplexity of the unsmoothed model distribution; capped so a diverging run logs a number.
    out["perplexity"] = float(np.exp(min(out["nll"], 80.0)))
    out["accuracy"] = sums["correct_sum"] / tokens
    out["exact_match"] = sums["exact_sum"] / max(sums["sequence_count"], 1e-9)
    out["tokens"] = sums["token_count"]
    if unit:
      out[f"bits_per_{unit}"] = out["nll"] / math.log(2)
  sum_keys = {"loss_sum", "nll_sum", "correct_sum", "token_count", "exact_sum", "sequence_count"}
  out.update({k: v for k, v in sums.items() if k not in sum_keys})
  return out
