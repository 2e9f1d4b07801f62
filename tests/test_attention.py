"""Attention against a plain NumPy reference: both kinds, masks, scale policies, query
blocks, the §3.2.1 argument."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import attention as attn
from transformer import masks

B, T, S, H, D = 2, 5, 7, 3, 8


def np_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=-1, keepdims=True)


def reference_attention(q, k, v, mask, scale, softcap=None):
  """softmax(q k^T * scale + mask) v in float64 NumPy; fully masked rows give zeros."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bthd,bshd->bhts", q, k) * scale
  if softcap is not None:
    logits = softcap * np.tanh(logits / softcap)
  if mask is not None:
    mask = np.broadcast_to(np.asarray(mask), logits.shape)
    logits = np.where(mask, logits, -1e30)
  w = np_softmax(logits)
  if mask is not None:
    w = np.where(mask.any(-1, keepdims=True), w, 0.0)
  return np.einsum("bhts,bshd->bthd", w, v), w


def random_qkv(seed=0, dtype=jnp.float32, t=T, s=S):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(kq, (B, t, H, D), dtype), jax.random.normal(kk, (B, s, H, D), dtype),
          jax.random.normal(kv, (B, s, H, D), dtype))


def attend(q, k, v, policy="inv_sqrt_dk", **kwargs):
  """Dot-product attention with a parameter-free policy's numbers, as MultiHeadAttention
  passes them."""
  parsed = attn.parse_scale(policy)
  return attn.attention(q, k, v, scale=parsed.static_scale(q.shape[-1]), softcap=parsed.softcap,
                        **kwargs)


def make_masks():
  q_ids = np.array([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
  kv_ids = np.array([[5, 6, 7, 8, 0, 0, 0], [5, 6, 7, 8, 9, 4, 3]])
  q_seg = np.array([[1, 1, 2, 2, 0], [1, 2, 2, 3, 3]])
  kv_seg = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 2, 2, 3, 3, 3]])
  return {
      "none": None,
      # Padding is the segment mask of ids != pad (what the model builds).
      "padding": masks.segment_mask(masks.segments_from_ids(jnp.asarray(q_ids)),
                                    masks.segments_from_ids(jnp.asarray(kv_ids))),
      "causal": jnp.asarray(np.tril(np.ones((T, S), bool)))[None, None],
      "segment": masks.segment_mask(jnp.asarray(q_seg), jnp.asarray(kv_seg)),
  }


POLICIES = [("inv_sqrt_dk", 1 / math.sqrt(D), None), ("none", 1.0, None), ("inv_dk", 1 / D, None),
            ("constant:0.05", 0.05, None), ("softcap:2", 1 / math.sqrt(D), 2.0),
            ("none+softcap:5", 1.0, 5.0)]


@pytest.mark.parametrize("policy,scale,softcap", POLICIES, ids=[str(p[0]) for p in POLICIES])
@pytest.mark.parametrize("mask_name", ["none", "padding", "causal", "segment"])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_matches_numpy_reference(policy, scale, softcap, mask_name, dtype, tol):
  q, k, v = random_qkv(dtype=dtype)
  mask = make_masks()[mask_name]
  out, logits, w = attend(q, k, v, policy, mask=mask, return_intermediates=True)
  ref_out, ref_w = reference_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                       v.astype(jnp.float32), mask, scale, softcap)
  assert out.dtype == dtype and w.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(w), ref_w, atol=tol, rtol=tol)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, atol=2 * tol, rtol=2 * tol)
  visible = np.ones(logits.shape, bool) if mask is None else np.broadcast_to(mask, logits.shape)
  assert np.isnan(np.asarray(logits)[~visible]).all() and np.isfinite(np.asarray(logits)[visible]).all()


def test_per_head_scale_array():
  q, k, v = random_qkv(1)
  scales = jnp.array([0.1, 0.5, 2.0])
  out = attn.attention(q, k, v, scale=scales)
  for h in range(H):
    ref, _ = reference_attention(q[:, :, h:h + 1], k[:, :, h:h + 1], v[:, :, h:h + 1], None,
                                 float(scales[h]))
    np.testing.assert_allclose(np.asarray(out[:, :, h:h + 1]), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fully_masked_rows_are_zero_not_nan(dtype):
  q, k, v = random_qkv(2, dtype)
  mask = jnp.zeros((B, 1, T, S), bool).at[:, :, :2].set(True)  # rows 2.. see no key
  out, _, w = attend(q, k, v, mask=mask, return_intermediates=True)
  assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
  assert float(jnp.abs(out[:, 2:]).max()) == 0.0 and float(jnp.abs(w[:, :, 2:]).max()) == 0.0
  np.testing.assert_allclose(np.asarray(w[:, :, :2].sum(-1)), 1.0, rtol=1e-6)
  fused = attend(q, k, v, mask=mask, implementation="xla")
  assert float(jnp.abs(fused[:, 2:]).max()) == 0.0


@pytest.mark.parametrize("mask_name", ["none", "padding", "segment"])
@pytest.mark.parametrize("scale", [1 / math.sqrt(D), 1.0, jnp.array([0.2, 0.4, 0.8])],
                         ids=["inv_sqrt_dk", "none", "per_head"])
def test_fused_path_matches_reference(mask_name, scale):
  q, k, v = random_qkv(3)
  mask = make_masks()[mask_name]
  ref = attn.attention(q, k, v, mask=mask, scale=scale)
  fused = attn.attention(q, k, v, mask=mask, scale=scale, implementation="xla")
  np.testing.assert_allclose(np.asarray(fused), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_fused_path_rejects_what_it_cannot_do():
  q, k, v = random_qkv()
  with pytest.raises(ValueError, match="softcap"):
    attend(q, k, v, "softcap:3", implementation="xla")
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
    attend(q, k, v, implementation="flash")


def test_jit_equals_eager():
  q, k, v = random_qkv(4)
  mask = make_masks()["segment"]
  f = lambda q, k, v, m: attend(q, k, v, "inv_dk", mask=m)  # noqa: E731
  np.testing.assert_allclose(np.asarray(jax.jit(f)(q, k, v, mask)), np.asarray(f(q, k, v, mask)),
                             atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("spec,expected", [
    ("inv_sqrt_dk", attn.ScalePolicy("inv_sqrt_dk")),
    ("constant:0.05", attn.ScalePolicy("constant", constant=0.05)),
    ("softcap:30", attn.ScalePolicy("inv_sqrt_dk", softcap=30.0)),
    ("qk_norm+softcap:10", attn.ScalePolicy("qk_norm", softcap=10.0)),
])
def test_parse_scale(spec, expected):
  assert attn.parse_scale(spec) == expected


@pytest.mark.parametrize("bad", ["sqrt", "constant:", "constant:-1", "constant:abc", "none+cap:3",
                                 "inv_dk:2", "softcap:0", "0.3", float("nan"), True])
def test_unknown_policy_lists_valid_ones(bad):
  with pytest.raises(ValueError, match="valid: inv_sqrt_dk, none, inv_dk, learned, qk_norm"):
    attn.parse_scale(bad)


def test_parameterised_policy_needs_the_module():
  with pytest.raises(ValueError, match="MultiHeadAttention"):
    attn.parse_scale("learned").static_scale(D)


@pytest.mark.parametrize("d_k", [16, 64, 256, 1024])
def test_scaling_keeps_logit_variance_near_one(d_k):
  """§3.2.1: for unit-variance q, k the dot product has variance d_k; 1/sqrt(d_k) undoes it.

  With n samples, the sample variance of q.k has relative standard error about
  sqrt(2/n) (the excess kurtosis 6/d_k adds little), 0.7% at n = 40,000; we allow 5%.
  """
  n = 40_000
  kq, kk = jax.random.split(jax.random.PRNGKey(d_k))
  q = jax.random.normal(kq, (1, n, 1, d_k))
  k = jax.random.normal(kk, (1, n, 1, d_k))
  dots = jnp.sum(q * k, axis=-1).ravel()
  assert float(jnp.var(dots)) == pytest.approx(d_k, rel=0.05)
  # All 2,000 x 2,000 query-key pairs, through the attention code's own logits.
  logits = lambda policy: attend(q[:, :2000], k[:, :2000], k[:, :2000], policy,  # noqa: E731
                                 return_intermediates=True)[1]
  assert float(jnp.var(logits("inv_sqrt_dk"))) == pytest.approx(1.0, rel=0.05)
  assert float(jnp.var(logits("none"))) == pytest.approx(d_k, rel=0.05)


def test_attention_dropout():
  q, k, v = random_qkv(5)
  plain = attend(q, k, v)
  same = attend(q, k, v, dropout_rate=0.5)   # no key: no dropout (deterministic)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(same))
  # Averaged over many dropout masks, the output approaches the no-dropout output.
  keys = jax.random.split(jax.random.PRNGKey(1), 2000)
  outs = jax.vmap(lambda r: attend(q, k, v, dropout_rate=0.5, dropout_rng=r))(keys)
  assert float(jnp.abs(outs[0] - plain).max()) > 0.1
  np.testing.assert_allclose(np.asarray(outs.mean(0)), np.asarray(plain), atol=0.1)


def reference_additive_scores(q, k, w):
  """w_h . tanh(q_i + k_j), one (b, h, t, s) at a time, in float64 NumPy."""
  q, k, w = (np.asarray(x, np.float64) for x in (q, k, w))
  b_, t_, h_, _ = q.shape
  s_ = k.shape[1]
  scores = np.zeros((b_, h_, t_, s_))
  for b in range(b_):
    for h in range(h_):
      for t in range(t_):
        for s in range(s_):
          scores[b, h, t, s] = w[h] @ np.tanh(q[b, t, h] + k[b, s, h])
  return scores


def additive_params(seed=7):
  return {"w": jax.random.normal(jax.random.PRNGKey(seed), (H, D)) / math.sqrt(D)}


@pytest.mark.parametrize("mask_name", ["none", "padding", "causal", "segment"])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
@pytest.mark.parametrize("block", [0, 2])
def test_additive_attention_matches_numpy_reference(mask_name, dtype, tol, block):
  q, k, v = random_qkv(6, dtype)
  params = additive_params()
  mask = make_masks()[mask_name]
  out, logits, w = attn.attention(q, k, v, kind="additive", params=params, mask=mask,
                                  query_block=block, return_intermediates=True)
  scores = reference_additive_scores(q.astype(jnp.float32), k.astype(jnp.float32), params["w"])
  ref_w = np_softmax(scores)
  if mask is not None:
    m = np.broadcast_to(np.asarray(mask), scores.shape)
    ref_w = np.where(m.any(-1, keepdims=True), np_softmax(np.where(m, scores, -1e30)), 0.0)
  visible = np.ones(scores.shape, bool) if mask is None else m
  assert out.dtype == dtype and w.dtype == jnp.float32
  # The scores and weights are float32 from the (bfloat16) inputs: tight in both dtypes.
  np.testing.assert_allclose(np.asarray(logits)[visible], scores[visible], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(w), ref_w, atol=1e-5, rtol=1e-5)
  ref_out = np.einsum("bhts,bshd->bthd", ref_w, np.asarray(v, np.float64))
  np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, atol=2 * tol, rtol=2 * tol)


@pytest.mark.parametrize("block", [1, 2, 3, 4, 5, 64])
def test_query_blocks_give_the_unblocked_values_and_gradients(block):
  """Blocks that divide T, that do not (the last one padded), and one block of all T."""
  q, k, v = random_qkv(8)
  params = additive_params(9)
  mask = make_masks()["segment"]

  def loss(q, k, v, w, block):
    out = attn.attention(q, k, v, kind="additive", params={"w": w}, mask=mask,
                         query_block=block)
    return jnp.sum(jnp.sin(out))

  whole = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)
  (value, grads), (ref_value, ref_grads) = (whole(q, k, v, params["w"], b) for b in (block, 0))
  np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
  for g, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_query_blocks_bound_the_memory_of_additive_scores():
  """XLA's own memory analysis: the [B, T, S, H, D] hidden tensor is held one block at a time.

  Forward and backward of B 2, T = S = 256, H 2, D 64: the full tensor is 64 MiB in
  float32; with blocks of 16 queries one block is 4 MiB.
  """
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
  shape = (2, 256, 2, 64)
  q, k, v = (jax.random.normal(key, shape) for key in (kq, kk, kv))
  w = jnp.ones((2, 64)) / 8

  def temp_bytes(block):
    loss = lambda q, k, v, w: jnp.sum(attn.attention(  # noqa: E731
        q, k, v, kind="additive", params={"w": w}, query_block=block))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(q, k, v, w).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  full_tensor = 2 * 256 * 256 * 2 * 64 * 4
  assert temp_bytes(0) >= full_tensor
  assert temp_bytes(16) < full_tensor / 4


def test_kinds_take_their_own_arguments():
  q, k, v = random_qkv()
  with pytest.raises(ValueError, match="unknown attention kind 'sigmoid'; valid: dot_product, "
                                       "additive"):
    attn.attention(q, k, v, kind="sigmoid", scale=1.0)
  with pytest.raises(ValueError, match="additive attention takes no scale"):
    attn.attention(q, k, v, kind="additive", scale=1.0, params=additive_params())
  with pytest.raises(ValueError, match="dot_product attention needs scale"):
    attn.attention(q, k, v)
  with pytest.raises(ValueError, match="supports only dot_product"):
    attn.attention(q, k, v, kind="additive", params=additive_params(), implementation="xla")


def test_mask_helpers():
  np.testing.assert_array_equal(np.asarray(masks.causal_mask(3))[0, 0],
                                [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
  seg = jnp.array([[1, 1, 2, 2, 2, 0]])
  np.testing.assert_array_equal(np.asarray(masks.positions_from_segments(seg)),
                                [[0, 1, 0, 1, 2, 0]])
  m = np.asarray(masks.segment_mask(seg, seg))[0, 0]
  assert m[0, 1] and not m[1, 2] and m[3, 4] and not m[5, 5] and not m[0, 5]
  both = masks.combine_masks(masks.segment_mask(seg, seg), masks.causal_mask(6), None)
  assert np.asarray(both)[0, 0, 3, 2] and not np.asarray(both)[0, 0, 2, 3]
  assert masks.combine_masks(None, None) is None
  pad = masks.segment_mask(masks.segments_from_ids(jnp.array([[4, 0]])),
                           masks.segments_from_ids(jnp.array([[4, 5, 0]])))
  np.testing.assert_array_equal(np.asarray(pad)[0, 0], [[1, 1, 0], [0, 0, 0]])


def test_masked_softmax_zeroes_fully_masked_rows_and_keeps_nan():
  """Fully masked rows are zeros, large logits are safe, and a NaN logit stays NaN (the
  training loop's guard must see it)."""
  logits = 30.0 * jax.random.normal(jax.random.PRNGKey(0), (3, 2, 5, 7))
  mask = jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, (3, 1, 5, 7))
  mask = mask.at[0, 0, 2].set(False).at[1, 0, 4].set(False)   # rows that see no key
  w = np.asarray(jax.jit(attn.masked_softmax)(logits, mask))
  np.testing.assert_array_equal(w[0, :, 2], 0.0)
  np.testing.assert_array_equal(w[1, :, 4], 0.0)
  np.testing.assert_allclose(w.sum(-1)[2], 1.0, rtol=1e-6)
  assert (w[~np.broadcast_to(np.asarray(mask), w.shape)] == 0).all()
  nan_logits = logits.at[2, 1, 3, 0].set(jnp.nan)
  for m in (mask.at[2, 0, 3, 0].set(True), None):
    assert np.isnan(np.asarray(jax.jit(attn.masked_softmax)(nan_logits, m))[2, 1, 3]).all()


def test_padding_of_the_last_query_block_reaches_no_gradient(monkeypatch):
  """Cosine scores are NaN at q = 0: the padded queries of a last, partial block must be
  values the score function takes, or NaN flows into dK through the cut rows."""
  def cosine_scores(q, k):
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    return jnp.einsum("bthd,bshd->bhts", q, k)

  monkeypatch.setitem(attn.KINDS, "cosine", attn.AttentionKind(cosine_scores, query_blocks=True))
  q, k, v = random_qkv(10)     # T = 5: blocks of 2 pad one query
  grads = [jax.grad(lambda k: jnp.sum(attn.attention(q, k, v, kind="cosine", query_block=b)))(k)
           for b in (0, 2)]
  assert np.isfinite(np.asarray(grads[1])).all()
  np.testing.assert_allclose(np.asarray(grads[1]), np.asarray(grads[0]), atol=1e-5, rtol=1e-5)
