"""Parameterised layers: multi-head attention, the FFN, embeddings, positional encodings.

Shape legend: B batch, T query length, S key/value length, H heads, D head dim,
M d_model, F d_ff, V vocabulary.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from transformer.attention import KINDS, attention
from transformer.config import TransformerConfig


class MultiHeadAttention(nn.Module):
  """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, ...) (§3.2.2).

  W^Q, W^K, W^V: d_model -> H x d_k, W^O: H x d_k -> d_model (d_k = config.d_k). `site`
  ('encoder_self', 'decoder_self' or 'cross') picks the attention kind and scale policy
  from the config. When the 'intermediates' collection is mutable, the float32 attention
  weights, logits (NaN where masked) and mask are sown as 'attention_weights',
  'attention_logits' and 'attention_mask' [B, H, T, S]; with a 'perturbations' collection
  a zero is added to the logits, whose gradient is the one reaching them
  (`transformer.diagnostics`).

  decode=True is incremental decoding with the 'cache' collection. The first such call
  (over a full-length dummy target) creates the cache: for self-attention empty key and
  value buffers [B, L, H, D]; for cross-attention the projected memory, computed once.
  Later calls take one token [B, 1, M], append its key and value, and attend to the
  positions filled so far.
  """
  config: TransformerConfig
  site: str

  @nn.compact
  def __call__(self, x_q_BTM: Array, x_kv_BSM: Array, mask: Array | None,
               deterministic: bool = True, decode: bool = False) -> Array:
    cfg = self.config
    H, D = cfg.num_heads, cfg.d_k
    kind, policy = cfg.attention_kind_at(self.site), cfg.scale_policy(self.site)

    def dense(name):  # W_i^Q, W_i^K or W_i^V of all heads at once
      return nn.DenseGeneral(features=(H, D), use_bias=cfg.attention_bias,
                             dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype, name=name)

    normalize = _l2_normalize if policy.kind == "qk_norm" else (lambda x: x)
    q_BTHD = normalize(dense("query")(x_q_BTM))
    if decode and self.site == "cross" and self.has_variable("cache", "cached_key"):
      k_BSHD = self.get_variable("cache", "cached_key")
      v_BSHD = self.get_variable("cache", "cached_value")
    else:
      k_BSHD = normalize(dense("key")(x_kv_BSM))
      v_BSHD = dense("value")(x_kv_BSM)
      if decode and self.site == "cross":  # the memory's projections, once per sequence
        self.put_variable("cache", "cached_key", k_BSHD)
        self.put_variable("cache", "cached_value", v_BSHD)
    if decode and self.site != "cross":
      k_BSHD, v_BSHD, mask = self._extend_cache(k_BSHD, v_BSHD, mask)

    # The kind's own arrays (additive: w_h), float32 like the learned scales: a few per
    # head, and they enter the float32 scores.
    params = {name: self.param(name, init, shape, jnp.float32)
              for name, (shape, init) in KINDS[kind].params(H, D).items()}
    use_dropout = cfg.attention_dropout_rate > 0.0 and not deterministic
    sow = (self.is_mutable_collection("intermediates")
           and cfg.attention_implementation == "reference")
    out = attention(
        q_BTHD, k_BSHD, v_BSHD, kind=kind,
        scale=self._scale(policy, H, D) if KINDS[kind].scaled else None, params=params,
        mask=mask, softcap=policy.softcap, dropout_rate=cfg.attention_dropout_rate,
        dropout_rng=self.make_rng("dropout") if use_dropout else None,
        query_block=cfg.attention_query_block,
        logits_hook=lambda logits: self.perturb("attention_logits", logits),
        implementation=cfg.attention_implementation, return_intermediates=sow)
    if sow:  # for the diagnostics and pictures of the scale ablation
      out, logits_BHTS, weights_BHTS = out
      self.sow("intermediates", "attention_weights", weights_BHTS)
      self.sow("intermediates", "attention_logits", logits_BHTS)
      self.sow("intermediates", "attention_mask",
               jnp.ones(logits_BHTS.shape, bool) if mask is None
               else jnp.broadcast_to(mask, logits_BHTS.shape))
    return nn.DenseGeneral(features=cfg.d_model, axis=(-2, -1), use_bias=cfg.attention_bias,
                           dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                           name="out")(out)

  def _scale(self, policy, H: int, D: int) -> float | Array:
    """The dot-product factor of the site's scale policy: a float, or learned per head [H]."""
    if policy.kind == "learned":
      return self.param("scale", nn.initializers.constant(1.0 / math.sqrt(D)), (H,), jnp.float32)
    if policy.kind == "qk_norm":
      # Cosine similarity per head times a learned g. g starts at sqrt(d_k), so at
      # initialisation the logits of random q, k have unit variance, as with 1/sqrt(d_k).
      return self.param("scale", nn.initializers.constant(math.sqrt(D)), (H,), jnp.float32)
    return policy.static_scale(D)

  def _extend_cache(self, k_BSHD: Array, v_BSHD: Array, mask: Array | None):
    """Self-attention cache: create it (first call) or append one step's key and value."""
    initialised = self.has_variable("cache", "cached_key")
    key = self.variable("cache", "cached_key", jnp.zeros, k_BSHD.shape, k_BSHD.dtype)
    value = self.variable("cache", "cached_value", jnp.zeros, v_BSHD.shape, v_BSHD.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialised:  # the creating call runs as a normal full-length pass
      return k_BSHD, v_BSHD, mask
    if k_BSHD.shape[1] != 1:
      raise ValueError(f"incremental decoding takes one token per call, got {k_BSHD.shape[1]}")
    i = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k_BSHD, (0, i, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v_BSHD, (0, i, 0, 0))
    index.value = i + 1
    max_length = key.value.shape[1]
    step_mask = (jnp.arange(max_length) <= i)[None, None, None, :]  # [1, 1, 1, L]
    return key.value, value.value, step_mask


def _l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def layer_norm(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
  """flax's LayerNorm with the config's epsilon and dtypes (statistics in float32)."""
  return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype,
                      param_dtype=cfg.weights_dtype, name=name)


class FeedForward(nn.Module):
  """FFN(x) = max(0, x W1 + b1) W2 + b2 (§3.3, Eq. 2), or GELU instead of ReLU."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BTM: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    h_BTF = nn.Dense(cfg.d_ff, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                     name="inner")(x_BTM)
    h_BTF = nn.relu(h_BTF) if cfg.activation == "relu" else nn.gelu(h_BTF)
    h_BTF = nn.Dropout(cfg.ffn_dropout_rate)(h_BTF, deterministic=deterministic)
    return nn.Dense(cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                    name="outer")(h_BTF)


def sinusoidal_encoding(positions: Array, d_model: int) -> Array:
  """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (§3.5); float32.

  Computed from explicit positions, so packed rows (positions restarting per
  example) get the same encodings as the examples alone.
  """
  inv_freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq.reshape((1,) * positions.ndim + (-1,))
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(
      positions.shape + (d_model,))


class PositionalEncoding(nn.Module):
  """Adds sinusoidal (§3.5) or learned position encodings to [B, T, M] embeddings ('none':
  none, the ablation that leaves attention permutation-invariant)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BTM: Array, positions_BT: Array) -> Array:
    cfg = self.config
    if cfg.positional_encoding == "none":
      return x_BTM
    if cfg.positional_encoding == "sinusoidal":
      pe_BTM = sinusoidal_encoding(positions_BT, cfg.d_model)
    else:
      if x_BTM.shape[1] > cfg.max_len:
        raise ValueError(f"sequence length {x_BTM.shape[1]} exceeds max_len={cfg.max_len} of "
                         "the learned positional encoding")
      table = self.param("embedding", nn.initializers.normal(stddev=0.02),
                         (cfg.max_len, cfg.d_model), cfg.weights_dtype)
      pe_BTM = jnp.take(table, positions_BT, axis=0)
    return x_BTM + pe_BTM.astype(x_BTM.dtype)


class Embedding(nn.Module):
  """Token embeddings, multiplied by sqrt(d_model) on input (§3.4); `attend` gives logits."""
  num_embeddings: int
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    # Std d_model^-0.5, so the sqrt(d_model)-scaled input embeddings have unit variance.
    self.embedding = self.param("embedding", nn.initializers.normal(stddev=cfg.d_model ** -0.5),
                                (self.num_embeddings, cfg.d_model), cfg.weights_dtype)

  def __call__(self, ids_BT: Array) -> Array:
    cfg = self.config
    x_BTM = jnp.take(self.embedding, ids_BT, axis=0).astype(cfg.compute_dtype)
    return x_BTM * jnp.asarray(math.sqrt(cfg.d_model), cfg.compute_dtype)

  def attend(self, x_BTM: Array) -> Array:
    """The pre-softmax linear transformation with the embedding matrix, [B, T, V]."""
    # float32 accumulation and output: the loss's softmax over V runs in float32.
    return jnp.einsum("btm,vm->btv", x_BTM, self.embedding.astype(self.config.compute_dtype),
                      preferred_element_type=jnp.float32)
