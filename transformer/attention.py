"""Attention as pure functions over explicit arrays (paper §3.2).

  Attention(Q, K, V) = weights(scores(Q, K), mask) V     weights: the masked softmax

Attention kinds (`KINDS`), compared in §3.2.1:
  dot_product  scores = Q K^T * scale                (§3.2.1, Eq. 1; scale = 1/sqrt(d_k))
  additive     scores_h(q, k) = w_h^T tanh(q + k)    (Bahdanau et al. 2015), w_h in R^{d_k}
               per head; with attention_bias the projections' biases sit inside the tanh

A new kind is one function (its scores, or its weights) and one line in `KINDS`: the
masked float32 weights, dropout, value sum, masks, caching, diagnostics and configs come
with it (tests/test_attention_kinds.py adds sigmoid attention that way).

Shape legend: B batch, T query length, S key/value length, H heads, D head dim
(d_k = d_v). Masks are boolean, True = "may attend", broadcastable to [B, H, T, S]
(built in `transformer.masks`).

Dot-product scores take the scale as a number, or one factor per head. Which number
is a *scale policy*, chosen per attention site in `TransformerConfig` (parsed once
there by `parse_scale`), so the ablation of the paper's 1/sqrt(d_k) needs no code change:

  inv_sqrt_dk      1/sqrt(d_k), the paper (§3.2.1)
  none             1.0
  inv_dk           1/d_k (the muP choice)
  constant:X       the float X
  learned          a learned per-head factor, initialised to 1/sqrt(d_k)
  qk_norm          queries and keys L2-normalised per head, times a learned per-head g
  softcap:C        inv_sqrt_dk, then C * tanh(logits / C) (Gemma 2)
  POLICY+softcap:C any policy above followed by the soft cap

`learned` and `qk_norm` carry parameters, so `transformer.layers.MultiHeadAttention`
turns the policy into numbers (`ScalePolicy.static_scale` for the others).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax import Array

IMPLEMENTATIONS = ("reference", "xla", "cudnn")


# Score functions: (q [B, T, H, D], k [B, S, H, D], **params) -> float32 logits [B, H, T, S].

def dot_product_scores(q_BTHD: Array, k_BSHD: Array, *, scale: float | Array) -> Array:
  """Q K^T * scale (§3.2.1, Eq. 1), accumulated in float32; scale a float or per head [H]."""
  return jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BSHD,
                    preferred_element_type=jnp.float32) * _per_head(scale)


def additive_scores(q_BTHD: Array, k_BSHD: Array, *, w: Array) -> Array:
  """w_h^T tanh(q_i + k_j) per head (Bahdanau et al. 2015), in float32; w [H, D].

  Builds a [B, T, S, H, D] tensor: `attention` evaluates it in blocks of queries.
  """
  hidden_BTSHD = jnp.tanh(q_BTHD.astype(jnp.float32)[:, :, None]
                          + k_BSHD.astype(jnp.float32)[:, None])
  return jnp.einsum("btshd,hd->bhts", hidden_BTSHD, w.astype(jnp.float32))


ParamSpecs = dict[str, tuple[tuple[int, ...], Callable]]  # name -> (shape, initializer)


def _additive_params(num_heads: int, head_dim: int) -> ParamSpecs:
  # Std d_k^-1/2: with unit-variance q and k, E[tanh(q + k)^2] ~ 0.52, so the initial
  # scores have variance ~0.5 at any d_k, near that of dot-product scores under 1/sqrt(d_k).
  return {"w": ((num_heads, head_dim), jax.nn.initializers.normal(stddev=head_dim ** -0.5))}


@dataclasses.dataclass(frozen=True)
class AttentionKind:
  """A way of scoring keys (and of weighing them); dropout and the value sum are shared."""
  scores: Callable[..., Array]            # (q, k, **params) -> float32 logits [B, H, T, S]
  params: Callable[[int, int], ParamSpecs] = lambda num_heads, head_dim: {}  # learned arrays
  scaled: bool = False                    # takes the scale policy's factor as `scale`
  query_blocks: bool = False              # scores computed per block of queries (memory)
  weights: Callable[[Array, Array | None], Array] | None = None  # None: `masked_softmax`


KINDS: dict[str, AttentionKind] = {
    "dot_product": AttentionKind(dot_product_scores, scaled=True),
    "additive": AttentionKind(additive_scores, params=_additive_params, query_blocks=True),
}


def attention(
    q_BTHD: Array, k_BSHD: Array, v_BSHD: Array, *,
    kind: str = "dot_product",
    scale: float | Array | None = None,
    params: Mapping[str, Array] | None = None,
    mask: Array | None = None,
    softcap: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    query_block: int = 0,
    logits_hook: Callable[[Array], Array] | None = None,
    implementation: str = "reference",
    return_intermediates: bool = False,
) -> Array | tuple[Array, Array, Array]:
  """Attention of one kind (module docstring), the softmax in float32.

  scale: the dot-product factor (a float or per-head [H]); only for scaled kinds.
  params: the kind's learned arrays (`KINDS[kind].params`). softcap: C in
  C * tanh(logits / C). Dropout on the weights applies when dropout_rng is given and
  dropout_rate > 0. query_block: for kinds with query_blocks, score this many queries
  at a time (0: all at once), each block recomputed in the backward pass, so the peak
  memory is that of one block; the values are the same. logits_hook: applied to the
  logits before the softmax (the diagnostics add a zero there to read their gradient).
  implementation: 'reference' (written out here) or a fused `jax.nn.dot_product_attention`
  ('xla', 'cudnn'), dot_product only, without dropout, soft capping or intermediates.
  Returns [B, T, H, D] in q's dtype; with return_intermediates also the float32 logits
  (NaN where masked) and weights, [B, H, T, S].
  """
  _check_shapes(q_BTHD, k_BSHD, v_BSHD)
  if kind not in KINDS:
    raise ValueError(f"unknown attention kind {kind!r}; valid: {', '.join(KINDS)}")
  spec = KINDS[kind]
  if spec.scaled != (scale is not None):
    raise ValueError(f"{kind} attention {'needs' if spec.scaled else 'takes no'} scale")
  use_dropout = dropout_rate > 0.0 and dropout_rng is not None
  if implementation != "reference":
    if kind != "dot_product" or use_dropout or softcap is not None or return_intermediates:
      raise ValueError(f"implementation={implementation!r} supports only dot_product attention, "
                       "without attention dropout, softcap or intermediates; use "
                       "implementation='reference'")
    return _fused_attention(q_BTHD, k_BSHD, v_BSHD, mask, scale, implementation)

  score_params = {**(params or {}), **({"scale": scale} if spec.scaled else {})}
  block = query_block if spec.query_blocks else 0
  logits_BHTS = _blockwise(spec.scores, q_BTHD, k_BSHD, score_params, block)
  if softcap is not None:
    logits_BHTS = softcap * jnp.tanh(logits_BHTS / softcap)
  if logits_hook is not None:
    logits_BHTS = logits_hook(logits_BHTS)
  weights_BHTS = (spec.weights or masked_softmax)(logits_BHTS, mask)
  probs_BHTS = weights_BHTS
  if use_dropout:
    keep_BHTS = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights_BHTS.shape)
    probs_BHTS = jnp.where(keep_BHTS, weights_BHTS / (1.0 - dropout_rate), 0.0)
  out_BTHD = jnp.einsum("bhts,bshd->bthd", probs_BHTS.astype(v_BSHD.dtype), v_BSHD,
                        preferred_element_type=jnp.float32).astype(q_BTHD.dtype)
  if not return_intermediates:
    return out_BTHD
  if mask is not None:
    logits_BHTS = jnp.where(jnp.broadcast_to(mask, logits_BHTS.shape), logits_BHTS, jnp.nan)
  return out_BTHD, logits_BHTS, weights_BHTS


def _blockwise(scores: Callable[..., Array], q_BTHD: Array, k_BSHD: Array,
               params: Mapping[str, Array], block: int) -> Array:
  """scores(q, k) over blocks of `block` queries (0 or >= T: in one go), as [B, H, T, S].

  A `lax.map` over the blocks, each under `jax.checkpoint`: the backward pass keeps only
  the block's queries and recomputes its scores, so no step holds more than one block.
  """
  B, T, H, D = q_BTHD.shape
  if block <= 0 or block >= T:
    return scores(q_BTHD, k_BSHD, **params)
  n = -(-T // block)
  # Padded with copies of the last query (cut below): values any score function takes, so
  # no NaN reaches the gradients through the padding (zeros would, e.g. for cosine scores).
  q_BTHD = jnp.pad(q_BTHD, ((0, 0), (0, n * block - T), (0, 0), (0, 0)), mode="edge")
  q_NBCHD = q_BTHD.reshape(B, n, block, H, D).swapaxes(0, 1)
  one_block = jax.checkpoint(lambda q_BCHD: scores(q_BCHD, k_BSHD, **params))
  logits_NBHCS = jax.lax.map(one_block, q_NBCHD)
  logits_BHNCS = logits_NBHCS.transpose(1, 2, 0, 3, 4)
  return logits_BHNCS.reshape(B, H, n * block, -1)[:, :, :T]


_BIG_NEG = float(jnp.finfo(jnp.float32).min)


def masked_softmax(logits_BHTS: Array, mask: Array | None) -> Array:
  """Softmax over keys in float32; a row with every key masked gives all zeros, never NaN."""
  logits_BHTS = logits_BHTS.astype(jnp.float32)
  if mask is None:
    return jax.nn.softmax(logits_BHTS, axis=-1)
  mask = jnp.broadcast_to(mask, logits_BHTS.shape)
  # where(), not an added bias: no overflow, and the value is safe for float32 softmax.
  weights = jax.nn.softmax(jnp.where(mask, logits_BHTS, _BIG_NEG), axis=-1)
  return jnp.where(jnp.any(mask, axis=-1, keepdims=True), weights, 0.0)


def _per_head(scale: float | Array) -> Array:
  """A float, or per-head factors [H] as [1, H, 1, 1] for the [B, H, T, S] logits."""
  scale = jnp.asarray(scale, jnp.float32)
  return scale.reshape(1, -1, 1, 1) if scale.ndim == 1 else scale


def _check_shapes(q: Array, k: Array, v: Array) -> None:
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [batch, len, heads, head_dim]; got {q.shape}, {k.shape}, "
                     f"{v.shape}")
  if k.shape != v.shape[:3] + k.shape[3:] or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape} disagree on batch, heads or head_dim")


def _fused_attention(q, k, v, mask, scale, implementation: str) -> Array:
  """`jax.nn.dot_product_attention` with the policy's scale passed through."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; "
                     f"valid: {', '.join(IMPLEMENTATIONS)}")
  if jnp.ndim(scale) == 0:
    fused_scale = float(scale)
  else:  # per-head factors: s_h (q . k) = (s_h q) . k, so fold them into q
    q = (q.astype(jnp.float32) * jnp.asarray(scale)[None, None, :, None]).astype(q.dtype)
    fused_scale = 1.0
  full_mask = None
  if mask is not None:
    full_mask = jnp.broadcast_to(mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
  out_BTHD = jax.nn.dot_product_attention(q, k, v, mask=full_mask, scale=fused_scale,
                                          implementation=implementation)
  if full_mask is not None:  # rows with no visible key: zeros, as the reference path gives
    row_ok_BTH = jnp.any(full_mask, axis=-1).transpose(0, 2, 1)
    out_BTHD = jnp.where(row_ok_BTH[..., None], out_BTHD, 0).astype(out_BTHD.dtype)
  return out_BTHD


# Scale policies (module docstring).

STATIC_POLICIES = ("inv_sqrt_dk", "none", "inv_dk")
PARAM_POLICIES = ("learned", "qk_norm")
VALID_POLICIES = STATIC_POLICIES + PARAM_POLICIES + ("constant:<float>", "softcap:<float>")


@dataclasses.dataclass(frozen=True)
class ScalePolicy:
  """A parsed attention-scale policy."""
  kind: str                      # one of STATIC_POLICIES, PARAM_POLICIES or 'constant'
  constant: float | None = None  # the value for kind == 'constant'
  softcap: float | None = None   # C in C * tanh(logits / C); None = no cap

  def static_scale(self, head_dim: int) -> float:
    """The scalar factor for a parameter-free policy."""
    if self.kind == "inv_sqrt_dk":
      return 1.0 / math.sqrt(head_dim)
    if self.kind == "none":
      return 1.0
    if self.kind == "inv_dk":
      return 1.0 / head_dim
    if self.kind == "constant":
      return float(self.constant)
    raise ValueError(f"attention scale policy {self.kind!r} has parameters; "
                     "use transformer.layers.MultiHeadAttention")


def parse_scale(spec: str) -> ScalePolicy:
  """Parses a scale policy string ('inv_sqrt_dk', 'constant:0.05', 'none+softcap:30', ...)."""
  if not isinstance(spec, str):
    raise _bad_policy(spec)
  base, _, cap = spec.strip().partition("+")
  softcap = None
  if cap:
    name, _, value = cap.partition(":")
    if name != "softcap" or not value:
      raise _bad_policy(spec)
    softcap = _positive_float(value, spec)
  name, _, value = base.partition(":")
  if name == "softcap" and not cap:
    return ScalePolicy("inv_sqrt_dk", softcap=_positive_float(value, spec))
  if name == "constant":
    return ScalePolicy("constant", constant=_positive_float(value, spec), softcap=softcap)
  if name in STATIC_POLICIES + PARAM_POLICIES and not value:
    return ScalePolicy(name, softcap=softcap)
  raise _bad_policy(spec)


def _bad_policy(spec: object, why: str = "") -> ValueError:
  return ValueError(f"unknown attention scale {spec!r}{why}; valid: {', '.join(VALID_POLICIES)} "
                    "(a policy may be followed by '+softcap:<float>')")


def _positive_float(text: str, spec: object) -> float:
  try:
    value = float(text)
  except ValueError:
    raise _bad_policy(spec, f" ({text!r} is not a number)") from None
  if not math.isfinite(value) or value <= 0:
    raise _bad_policy(spec, f" ({text!r} must be a positive finite number)")
  return value
