"""Attention as pure functions over explicit arrays (paper §3.2).

Shape legend: B batch, T query length, S key/value length, H heads, D head dim
(d_k = d_v), A additive-attention hidden size. Masks are boolean, True = "may
attend", broadcastable to [B, H, T, S] (helpers in `transformer.masks`).

The scale applied to the logits is a *policy*, so the ablation of the paper's
1/sqrt(d_k) needs no code change:

  inv_sqrt_dk      1/sqrt(d_k), the paper (§3.2.1)
  none             1.0
  inv_dk           1/d_k (the muP choice)
  constant:X       the float X (a bare float works too)
  learned          a learned per-head temperature, initialised to 1/sqrt(d_k)
  qk_norm          queries and keys normalised per head, then a learned scale
  softcap:C        inv_sqrt_dk, then C * tanh(logits / C) (Gemma 2)
  POLICY+softcap:C any policy above followed by the soft cap

`learned` and `qk_norm` carry parameters, so they live in
`transformer.layers.MultiHeadAttention`, which passes the resulting per-head scale
array to `dot_product_attention` here.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import Array

from transformer.masks import (causal_mask, combine_masks, padding_mask,  # noqa: F401  (re-exported)
                               segment_mask)

STATIC_POLICIES = ("inv_sqrt_dk", "none", "inv_dk")
PARAM_POLICIES = ("learned", "qk_norm")
VALID_POLICIES = STATIC_POLICIES + PARAM_POLICIES + ("constant:<float>", "softcap:<float>")
IMPLEMENTATIONS = ("reference", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class ScalePolicy:
  """A parsed attention-scale policy (see the module docstring)."""
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


def parse_scale(spec: str | float | int | ScalePolicy) -> ScalePolicy:
  """Parses a scale policy string ('inv_sqrt_dk', 'constant:0.05', 'none+softcap:30', ...)."""
  if isinstance(spec, ScalePolicy):
    return spec
  if isinstance(spec, (int, float)) and not isinstance(spec, bool):
    return ScalePolicy("constant", constant=_positive_float(str(spec), spec))
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


def _resolve(scale, head_dim: int) -> tuple[float | Array, float | None]:
  """Returns (scale as float or per-head array [H], soft cap or None)."""
  if isinstance(scale, (str, int, float, ScalePolicy)) and not isinstance(scale, bool):
    policy = parse_scale(scale)
    return policy.static_scale(head_dim), policy.softcap
  return jnp.asarray(scale), None  # a per-head array from a parameterised policy


def _check_shapes(q: Array, k: Array, v: Array) -> None:
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [batch, len, heads, head_dim]; got {q.shape}, {k.shape}, "
                     f"{v.shape}")
  if k.shape != v.shape[:3] + k.shape[3:] or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape} disagree on batch, heads or head_dim")


def attention_logits(q: Array, k: Array, scale, softcap: float | None = None) -> Array:
  """Scaled (and optionally soft-capped) logits q k^T * scale, [B, H, T, S], float32."""
  logits_BHTS = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
  scale = jnp.asarray(scale, jnp.float32)
  if scale.ndim == 1:  # one factor per head
    scale = scale[None, :, None, None]
  logits_BHTS = logits_BHTS * scale
  if softcap is not None:
    logits_BHTS = softcap * jnp.tanh(logits_BHTS / softcap)
  return logits_BHTS


def masked_softmax(logits_BHTS: Array, mask: Array | None, custom_vjp: bool = False) -> Array:
  """Softmax over keys in float32; a row with every key masked gives all zeros, never NaN.

  custom_vjp: the same values, with the backward pass written out (fewer ops to compile):
  d logits = w * (g - sum_keys(g * w)), which is zero wherever w is (masked keys).
  """
  if custom_vjp:
    return _softmax_written_vjp(logits_BHTS.astype(jnp.float32), mask)
  return _masked_softmax(logits_BHTS, mask)


_BIG_NEG = float(jnp.finfo(jnp.float32).min)


def _masked_softmax(logits_BHTS: Array, mask: Array | None) -> Array:
  logits_BHTS = logits_BHTS.astype(jnp.float32)
  if mask is None:
    return jax.nn.softmax(logits_BHTS, axis=-1)
  mask = jnp.broadcast_to(mask, logits_BHTS.shape)
  # where(), not an added bias: no overflow, and the value is safe for float32 softmax.
  weights = jax.nn.softmax(jnp.where(mask, logits_BHTS, _BIG_NEG), axis=-1)
  return jnp.where(jnp.any(mask, axis=-1, keepdims=True), weights, 0.0)


def _masked_softmax_forward(logits_BHTS: Array, mask: Array | None) -> Array:
  """`_masked_softmax`'s values in fewer ops (jax.nn.softmax's own steps): a row with no
  visible key is _BIG_NEG throughout, so the row maximum the softmax takes anyway marks
  it; no separate reduction over the mask. Bit for bit the same for finite logits, and a
  NaN passes through as there; only a row whose visible logits are all -inf differs
  (zeros here, weight on the masked keys there)."""
  logits_BHTS = logits_BHTS.astype(jnp.float32)
  if mask is not None:
    logits_BHTS = jnp.where(mask, logits_BHTS, _BIG_NEG)
  max_BHT1 = jnp.max(logits_BHTS, axis=-1, keepdims=True)
  unnormalized = jnp.exp(logits_BHTS - max_BHT1)
  weights = unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)
  return weights if mask is None else jnp.where(max_BHT1 == _BIG_NEG, 0.0, weights)


@jax.custom_vjp
def _softmax_written_vjp(logits_BHTS: Array, mask: Array | None) -> Array:
  return _masked_softmax_forward(logits_BHTS, mask)


def _softmax_written_vjp_fwd(logits_BHTS, mask):
  weights_BHTS = _masked_softmax_forward(logits_BHTS, mask)
  return weights_BHTS, weights_BHTS


def _softmax_written_vjp_bwd(weights_BHTS, g_BHTS):  # float32 in and out
  d_BHTS = weights_BHTS * (g_BHTS - jnp.sum(g_BHTS * weights_BHTS, axis=-1, keepdims=True))
  return d_BHTS, None


_softmax_written_vjp.defvjp(_softmax_written_vjp_fwd, _softmax_written_vjp_bwd)


def _attention_dropout(weights: Array, rate: float, rng: Array | None) -> Array:
  if rng is None:
    raise ValueError("attention dropout_rate > 0 with deterministic=False needs dropout_rng")
  keep = jax.random.bernoulli(rng, 1.0 - rate, weights.shape)
  return jnp.where(keep, weights / (1.0 - rate), 0.0)


def dot_product_attention(
    q: Array, k: Array, v: Array, *,
    mask: Array | None = None,
    scale: str | float | Array | ScalePolicy = "inv_sqrt_dk",
    logit_softcap: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_weights: bool = False,
    implementation: str = "reference",
    custom_vjp: bool = False,
) -> Array | tuple[Array, Array]:
  """Attention(Q, K, V) = softmax(Q K^T * scale) V (§3.2.1, Eq. 1; scale 1/sqrt(d_k) there).

  Args:
    q: [B, T, H, D]; k, v: [B, S, H, D].
    mask: boolean, broadcastable to [B, H, T, S]; True = may attend.
    scale: a policy name (module docstring), a float, or a per-head array [H].
    logit_softcap: C in C * tanh(logits / C), applied after the scale; overrides a
      policy's own '+softcap:C'.
    implementation: 'reference' (einsum + float32 softmax) or a fused path of
      `jax.nn.dot_product_attention` ('xla' or 'cudnn'); the fused paths support neither
      dropout, soft capping nor returning the weights.
    custom_vjp: the reference path's softmax with its backward written out (same values;
      gradients equal to float rounding), which compiles to fewer ops.
  Returns:
    [B, T, H, D] in q's dtype, and the float32 weights [B, H, T, S] if return_weights.
  """
  _check_shapes(q, k, v)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; "
                     f"valid: {', '.join(IMPLEMENTATIONS)}")
  head_dim = q.shape[-1]
  scale, softcap = _resolve(scale, head_dim)
  if logit_softcap is not None:
    softcap = logit_softcap
  use_dropout = dropout_rate > 0.0 and not deterministic

  if implementation != "reference":
    if use_dropout or softcap is not None or return_weights:
      raise ValueError(f"implementation={implementation!r} supports neither attention dropout, "
                       "softcap nor return_weights; use implementation='reference'")
    return _fused_attention(q, k, v, mask, scale, implementation)

  logits_BHTS = attention_logits(q, k, scale, softcap)
  weights_BHTS = masked_softmax(logits_BHTS, mask, custom_vjp)
  probs_BHTS = _attention_dropout(weights_BHTS, dropout_rate, dropout_rng) if use_dropout \
      else weights_BHTS
  out_BTHD = jnp.einsum("bhts,bshd->bthd", probs_BHTS.astype(v.dtype), v,
                        preferred_element_type=jnp.float32).astype(q.dtype)
  return (out_BTHD, weights_BHTS) if return_weights else out_BTHD


def _fused_attention(q, k, v, mask, scale, implementation: str) -> Array:
  """`jax.nn.dot_product_attention` with the policy's scale passed through."""
  if isinstance(scale, float):
    fused_scale = scale
  else:  # per-head factors: s_h (q . k) = (s_h q) . k, so fold them into q
    q = (q.astype(jnp.float32) * scale[None, None, :, None]).astype(q.dtype)
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


def additive_attention(q: Array, k: Array, v: Array, params: dict[str, Array], *,
                       mask: Array | None = None,
                       return_weights: bool = False) -> Array | tuple[Array, Array]:
  """Additive attention (Bahdanau et al., 2015): score = v_a^T tanh(W_q q + W_k k).

  The paper (§3.2.1) compares this family with dot-product attention.
  Args:
    q: [B, T, H, D]; k, v: [B, S, H, D].
    params: 'w_q' [H, D, A], 'w_k' [H, D, A], 'v' [H, A].
  """
  _check_shapes(q, k, v)
  for name in ("w_q", "w_k", "v"):
    if name not in params:
      raise ValueError(f"additive_attention params need 'w_q', 'w_k' and 'v'; missing {name!r}")
  q_BTHA = jnp.einsum("bthd,hda->btha", q, params["w_q"], preferred_element_type=jnp.float32)
  k_BSHA = jnp.einsum("bshd,hda->bsha", k, params["w_k"], preferred_element_type=jnp.float32)
  hidden_BTSHA = jnp.tanh(q_BTHA[:, :, None] + k_BSHA[:, None, :])
  logits_BHTS = jnp.einsum("btsha,ha->bhts", hidden_BTSHA, params["v"].astype(jnp.float32))
  weights_BHTS = masked_softmax(logits_BHTS, mask)
  out_BTHD = jnp.einsum("bhts,bshd->bthd", weights_BHTS.astype(v.dtype), v,
                        preferred_element_type=jnp.float32).astype(q.dtype)
  return (out_BTHD, weights_BHTS) if return_weights else out_BTHD
