"""Additive attention and a free d_k in the model: NumPy reference, per-site choice,
refusals, parameter counts, cached decoding, scan/remat, bfloat16 and training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import train_fixtures as fx
from test_model import numpy_heads_out
from transformer import decoding, flops, optim, step as step_lib
from transformer.config import TransformerConfig
from transformer.layers import MultiHeadAttention
from transformer.model import Transformer, shift_right
from transformer.params import count_parameters, stack_layers, unstack_layers


def random_ids(key, shape, vocab=64):
  return jax.random.randint(jax.random.PRNGKey(key), shape, 3, vocab)


def init(cfg, src_len=6, tgt_len=6):
  model = Transformer(cfg)
  src = None if cfg.decoder_only else jnp.ones((2, src_len), jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), src, jnp.ones((2, tgt_len), jnp.int32))
  return model, params["params"]


@pytest.mark.parametrize("site", ["encoder_self", "cross"])
def test_additive_multihead_attention_matches_numpy(site):
  """Projections to H x d_k with d_k != d_model / H, biases inside the tanh, a mask."""
  cfg = TransformerConfig.tiny(attention_kind="additive", head_dim=24, attention_bias=True,
                               attention_query_block=2)
  mha = MultiHeadAttention(cfg, site)
  x_q = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 64))
  x_kv = x_q if site == "encoder_self" else jax.random.normal(jax.random.PRNGKey(2), (2, 7, 64))
  mask = jnp.ones((2, 1, 5, x_kv.shape[1]), bool).at[1, :, :, 3:].set(False)
  params = mha.init(jax.random.PRNGKey(1), x_q, x_kv, mask)["params"]
  assert params["query"]["kernel"].shape == (64, 4, 24) and params["w"].shape == (4, 24)
  assert params["out"]["kernel"].shape == (4, 24, 64) and "scale" not in params
  out = mha.apply({"params": params}, x_q, x_kv, mask)

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  proj = lambda name, x: (np.einsum("btm,mhd->bthd", np.asarray(x, np.float64),  # noqa: E731
                                    p[name]["kernel"]) + p[name]["bias"])
  q, k, v = proj("query", x_q), proj("key", x_kv), proj("value", x_kv)
  hidden = np.tanh(q[:, :, None] + k[:, None])                  # [B, T, S, H, D]
  logits = np.einsum("btshd,hd->bhts", hidden, p["w"])
  np.testing.assert_allclose(np.asarray(out), numpy_heads_out(logits, mask, v, p), atol=2e-5,
                             rtol=2e-5)


def test_kind_per_site():
  """Additive cross-attention only: the global scale policy applies to the scaled sites."""
  cfg = TransformerConfig.tiny(cross_attention_kind="additive", attention_scale="qk_norm")
  sites = ("encoder_self", "decoder_self", "cross")
  assert [cfg.attention_kind_at(s) for s in sites] == ["dot_product", "dot_product", "additive"]
  assert [cfg.scale_policy(s).kind for s in sites] == ["qk_norm", "qk_norm", "inv_sqrt_dk"]
  _, params = init(cfg)
  layer = params["decoder"]["decoder_0"]
  assert "w" in layer["cross_attention"] and "scale" not in layer["cross_attention"]
  assert "w" not in layer["self_attention"] and "scale" in layer["self_attention"]
  assert "w" not in params["encoder"]["encoder_0"]["self_attention"]


@pytest.mark.parametrize("changes,message", [
    ({"attention_kind": "sigmoid"}, "attention_kind='sigmoid' is not one of dot_product, additive"),
    ({"attention_kind": "additive", "attention_scale": "none"},
     "attention_scale='none' means nothing here: no attention site uses it"),
    ({"cross_attention_kind": "additive", "cross_attention_scale": "qk_norm"},
     "cross_attention_kind='additive' has no scale, so cross_attention_scale='qk_norm' means "
     "nothing for it"),
    ({"attention_kind": "additive", "decoder_self_attention_scale": "softcap:5"},
     "decoder_self_attention_scale='softcap:5' means nothing"),
    ({"attention_kind": "additive", "attention_implementation": "xla"},
     "attention_implementation='xla' runs dot_product attention only"),
    ({"head_dim": 0}, "head_dim=0 must be a positive integer"),
    ({"d_model": 60, "num_heads": 8}, "set head_dim to decouple them"),
    ({"attention_query_block": -1}, "attention_query_block=-1 must be an integer >= 0"),
])
def test_bad_kind_configs_are_named(changes, message):
  with pytest.raises(ValueError, match=message):
    TransformerConfig.tiny(**changes)


def test_head_dim_decouples_d_model_from_heads():
  cfg = TransformerConfig.tiny(d_model=60, num_heads=8, head_dim=10)
  assert cfg.d_k == 10 and TransformerConfig.tiny().d_k == 16


def hand_count(cfg: TransformerConfig) -> int:
  """Post-LN, shared sinusoidal embeddings: the parameters counted by hand."""
  M, F, H, D, V = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_k, cfg.vocab_size
  attention = 4 * M * H * D + (3 * H * D + M if cfg.attention_bias else 0)
  additive = {site: H * D * (cfg.attention_kind_at(site) == "additive")
              for site in ("encoder_self", "decoder_self", "cross")}
  ffn, norm = 2 * M * F + F + M, 2 * M
  encoder = attention + additive["encoder_self"] + ffn + 2 * norm
  decoder = 2 * attention + additive["decoder_self"] + additive["cross"] + ffn + 3 * norm
  return V * M + cfg.num_encoder_layers * encoder + cfg.num_decoder_layers * decoder


@pytest.mark.parametrize("overrides", [
    {}, {"head_dim": 40}, {"num_heads": 1, "head_dim": 256}, {"attention_kind": "additive"},
    {"attention_kind": "additive", "head_dim": 8, "attention_bias": True},
    {"cross_attention_kind": "additive", "head_dim": 32}])
def test_parameter_count_formula_covers_head_dim_and_kinds(overrides):
  cfg = TransformerConfig.tiny(**overrides)
  assert count_parameters(cfg) == hand_count(cfg)


def test_golden_count_of_base_with_wide_heads():
  """Transformer-base with d_k 128 (8 heads, H d_k = 1024 != d_model): each attention's
  four projections double, 4 * 512 * 512 more weights per attention (6 + 12 of them)."""
  cfg = TransformerConfig.base(head_dim=128)
  assert count_parameters(cfg) == 63_045_632 + 18 * 4 * 512 * 512 == 81_920_000


def test_flops_count_head_dim():
  cfg = TransformerConfig.tiny(head_dim=40)   # H D = 160, M = 64
  B, S, T, M, HD = 2, 3, 5, 64, 160
  attention_self = 4 * 2 * B * S * M * HD + 2 * 2 * B * S * S * HD
  ffn = 2 * 2 * B * S * 64 * 128
  assert flops.step_flops(cfg, B, S, T).encoder == 2 * (attention_self + ffn)
  narrow = flops.step_flops(TransformerConfig.tiny(), B, S, T).encoder
  assert flops.step_flops(cfg.replace(head_dim=16), B, S, T).encoder == narrow


@pytest.mark.parametrize("overrides", [
    {"attention_kind": "additive", "head_dim": 24, "attention_query_block": 3},
    {"cross_attention_kind": "additive"},
    {"attention_kind": "additive", "num_encoder_layers": 0, "norm_position": "pre"},
    {"head_dim": 40, "num_heads": 2}],
    ids=["additive", "additive_cross_only", "additive_decoder_only", "dot_product_head_dim"])
def test_cached_decoding_equals_teacher_forcing(overrides):
  cfg = TransformerConfig.tiny(**{"num_encoder_layers": 1, "num_decoder_layers": 2, **overrides})
  model, params = init(cfg)
  src = random_ids(1, (2, 5)).at[1, 3:].set(0)   # a padded row
  tgt = random_ids(2, (2, 7))
  inputs = None if cfg.decoder_only else src
  full = jax.jit(model.apply)({"params": params}, inputs, tgt)
  decoder_inputs = shift_right(tgt, jnp.ones_like(tgt), cfg.bos_id)
  step_fn, cache = decoding.model_step_fn(model, params, inputs, 2, tgt.shape[1])
  step_fn = jax.jit(step_fn)
  for t in range(tgt.shape[1]):
    logp, cache = step_fn(decoder_inputs[:, t], jnp.array(t), cache)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(jax.nn.log_softmax(full[:, t])),
                               atol=1e-4, rtol=1e-4, err_msg=f"step {t}")


def test_scan_and_remat_give_the_loop_numbers_for_additive_attention():
  cfg = TransformerConfig.tiny(attention_kind="additive", head_dim=12, attention_query_block=2,
                               num_encoder_layers=2, num_decoder_layers=2)
  model, params = init(cfg)
  fast_cfg = cfg.replace(scan_layers=True, remat=True)
  src, tgt = random_ids(3, (2, 5)), random_ids(4, (2, 4))

  def loss(m):
    return lambda p: jnp.mean(jax.nn.log_softmax(m.apply({"params": p}, src, tgt))[..., 5])
  ref_loss, ref_grad = jax.jit(jax.value_and_grad(loss(model)))(params)
  fast_loss, fast_grad = jax.jit(jax.value_and_grad(loss(Transformer(fast_cfg))))(
      stack_layers(params, cfg))
  np.testing.assert_allclose(float(fast_loss), float(ref_loss), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6,
                                                       rtol=1e-5),
               unstack_layers(fast_grad, cfg), ref_grad)


def test_bfloat16_additive_attention_stays_close_to_float32():
  cfg = TransformerConfig.tiny(attention_kind="additive", num_encoder_layers=1,
                               num_decoder_layers=1)
  model, params = init(cfg)
  src, tgt = random_ids(5, (2, 5)), random_ids(6, (2, 4))
  a = jax.jit(model.apply)({"params": params}, src, tgt)
  b = jax.jit(Transformer(cfg.replace(dtype="bfloat16")).apply)({"params": params}, src, tgt)
  assert b.dtype == jnp.float32 and not np.array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.1)


def test_additive_model_with_free_head_dim_learns_to_copy():
  """Init, 60 train steps and greedy decoding with additive attention and d_k 24 != 64 / 4."""
  cfg = TransformerConfig.tiny(vocab_size=fx.VOCAB, attention_kind="additive", head_dim=24,
                               num_encoder_layers=1, num_decoder_layers=1)
  model = Transformer(cfg)
  ocfg = optim.OptimConfig(schedule="warmup_rsqrt", learning_rate=3e-3, warmup_steps=5,
                           grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(ocfg, cfg.d_model, 100)
  state = step_lib.init_state(model, tx, jax.random.key(0), source_length=12, target_length=12)

  @jax.jit
  def train(state, batch):
    def loss_fn(p):
      sums = step_lib.loss_sums(model, p, batch, 0.0)
      return sums["loss_sum"] / sums["token_count"]
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), loss

  rs = np.random.RandomState(0)
  losses = []
  for _ in range(60):
    state, loss = train(state, fx.copy_batch(rs, 16))
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 0.5, losses
  # Greedy decoding is a fixed point of teacher forcing: each output token is an argmax of
  # the teacher-forced logits over the output before it (up to and with the first EOS). Up
  # to 1e-4: the cached and the full pass sum in different orders, so of two tokens tied to
  # within rounding either may be chosen, differently on different CPUs.
  src = jnp.asarray(fx.copy_batch(rs, 4)["inputs"])
  out = np.asarray(decoding.greedy_decode(model, state.params, src, max_length=12))
  logits = np.asarray(model.apply({"params": state.params}, src, jnp.asarray(out)))
  chosen = np.take_along_axis(logits, out[..., None], axis=-1)[..., 0]
  for row, tokens in enumerate(out):
    n = int(np.argmax(tokens == 2)) + 1 if (tokens == 2).any() else len(tokens)
    np.testing.assert_array_less(logits[row, :n].max(-1) - chosen[row, :n], 1e-4)


def test_a_new_kind_is_one_function_and_one_registry_line(monkeypatch):
  """Sigmoid attention (weights sigmoid(logits - log S), masked; rows need not sum to 1),
  added as a researcher would: the model, cached decoding and diagnostics take it as is."""
  from transformer import attention as attn, diagnostics  # noqa: PLC0415

  def masked_sigmoid(logits_BHTS, mask):
    weights = jax.nn.sigmoid(logits_BHTS - jnp.log(logits_BHTS.shape[-1]))
    return weights if mask is None else jnp.where(mask, weights, 0.0)

  monkeypatch.setitem(attn.KINDS, "sigmoid", attn.AttentionKind(
      attn.dot_product_scores, scaled=True, weights=masked_sigmoid))
  cfg = TransformerConfig.tiny(attention_kind="sigmoid", num_encoder_layers=1,
                               num_decoder_layers=1)
  model, params = init(cfg)
  src = random_ids(7, (2, 6)).at[0, 4:].set(0)
  tgt = random_ids(8, (2, 5))
  _, state = model.apply({"params": params}, src, tgt, mutable=["intermediates"])
  weights = state["intermediates"]["encoder"]["encoder_0"]["self_attention"][
      "attention_weights"][0]
  assert float(weights[0, :, :4].sum(-1).min()) < 0.5   # not a softmax: rows the old rule dropped
  stats, _ = diagnostics.Probe(model, {"inputs": src, "targets": tgt})(params)
  # Every query row with a visible key counts (the 4 real tokens of row 0, the 6 of row 1),
  # whatever its weights sum to.
  w = np.asarray(weights, np.float64)
  entropy = -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0), axis=-1)
  rows = np.concatenate([entropy[0, :, :4], entropy[1]], axis=-1)   # [H, 10]
  for h in range(cfg.num_heads):
    np.testing.assert_allclose(stats[f"attn/encoder_0/self_attention/entropy_mean/h{h}"],
                               rows[h].mean(), rtol=1e-4)
  full = model.apply({"params": params}, src, tgt)
  step_fn, cache = decoding.model_step_fn(model, params, src, 2, tgt.shape[1])
  logp, _ = step_fn(jnp.full((2,), cfg.bos_id), jnp.array(0), cache)
  np.testing.assert_allclose(np.asarray(logp), np.asarray(jax.nn.log_softmax(full[:, 0])),
                             atol=1e-4, rtol=1e-4)
