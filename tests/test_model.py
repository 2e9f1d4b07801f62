"""The Transformer model: golden parameter counts, causality, padding invariance, options."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer.config import PRESETS, TransformerConfig, preset
from transformer.model import Transformer, shift_right
from transformer.params import count_parameters

# Shared 37,000-token vocabulary, post-LN, attention projections without biases (the
# config's default, as §3.2.2 writes them; the paper rounds base and big to 65M and 213M,
# Table 3). Counted by hand: embeddings V*M; per encoder layer 4M^2 + (2MF+F+M) + 2*2M;
# per decoder layer 8M^2 + (2MF+F+M) + 3*2M.
GOLDEN_PARAMETER_COUNTS = {
    "base": 63_045_632,
    "big": 214_171_648,
    "small": 7_568_384,
    "tiny": 169_984,
}


@pytest.mark.parametrize("name", PRESETS)
def test_golden_parameter_counts(name):
  assert count_parameters(preset(name)) == GOLDEN_PARAMETER_COUNTS[name]


def test_every_preset_has_a_golden_count():
  assert set(GOLDEN_PARAMETER_COUNTS) == set(PRESETS)


def test_attention_bias_adds_exactly_the_projection_biases():
  # Per encoder layer 4 biases of M (W^Q, W^K, W^V as H x D, W^O), per decoder layer 8:
  # 63,082,496 for base with them, flax's layout (and that of runs before commit 5274e4f).
  base = preset("base")
  assert count_parameters(base.replace(attention_bias=True)) == (
      GOLDEN_PARAMETER_COUNTS["base"] + 6 * 4 * 512 + 6 * 8 * 512) == 63_082_496


@pytest.mark.parametrize("scan", [False, True])
def test_no_attention_bias_is_the_biased_model_with_zero_biases(scan):
  """attention_bias=False computes what the biased model computes with those biases at 0."""
  cfg = TransformerConfig.tiny(scan_layers=scan, dropout_rate=0.1, attention_bias=True)
  src = jax.random.randint(jax.random.PRNGKey(1), (3, 9), 3, 64)
  tgt = jax.random.randint(jax.random.PRNGKey(2), (3, 7), 3, 64)
  biased = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(0), src, tgt)["params"]
  projections = ("query", "key", "value", "out")
  dropped, zeroed = [], []

  def strip(tree, zero):
    out = {}
    for name, sub in tree.items():
      if not isinstance(sub, dict):
        out[name] = sub
      elif name in projections and "bias" in sub:
        (zeroed if zero else dropped).append(name)
        out[name] = ({**sub, "bias": jnp.zeros_like(sub["bias"])} if zero
                     else {"kernel": sub["kernel"]})
      else:
        out[name] = strip(sub, zero)
    return out

  unbiased = Transformer(cfg.replace(attention_bias=False))
  params = strip(biased, zero=False)
  assert jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(unbiased.init, jax.random.PRNGKey(0), src, tgt)["params"])
  rngs = {"dropout": jax.random.PRNGKey(3)}
  got = unbiased.apply({"params": params}, src, tgt, deterministic=False, rngs=rngs)
  want = Transformer(cfg).apply({"params": strip(biased, zero=True)}, src, tgt,
                                deterministic=False, rngs=rngs)
  assert len(dropped) == len(zeroed) == (4 + 8) * (1 if scan else 2)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_pre_ln_adds_exactly_the_final_norms():
  post = count_parameters(TransformerConfig.tiny())
  pre = count_parameters(TransformerConfig.tiny(norm_position="pre"))
  assert pre - post == 2 * 2 * 64  # encoder and decoder final LayerNorm, scale and bias


def test_unshared_embeddings_add_two_matrices():
  shared = count_parameters(TransformerConfig.tiny())
  unshared = count_parameters(TransformerConfig.tiny(share_embeddings=False, target_vocab_size=80))
  # source (V x M, same size as the shared one) + target (V' x M) + output (M x V')
  assert unshared - shared == 2 * 80 * 64


def tiny_model(**overrides):
  # One layer each: every property below holds per layer, and compiling stays cheap.
  overrides = {"num_encoder_layers": 1, "num_decoder_layers": 1, **overrides}
  cfg = TransformerConfig.tiny(**overrides)
  model = Transformer(cfg)
  ids = jnp.ones((2, 6), jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), ids, ids)["params"]
  return cfg, model, params


def random_ids(key, shape, vocab=64):
  return jax.random.randint(jax.random.PRNGKey(key), shape, 3, vocab)


@pytest.mark.parametrize("overrides", [{}, {"norm_position": "pre"},
                                       {"positional_encoding": "learned"},
                                       {"num_encoder_layers": 0}],
                         ids=["post", "pre", "learned_pe", "decoder_only"])
def test_decoder_is_causal_by_gradient(overrides):
  """d output[t] / d input embedding[t'] is exactly zero for every t' > t."""
  cfg, model, params = tiny_model(**overrides)
  src, tgt = random_ids(1, (1, 5)), random_ids(2, (1, 6))
  variables = {"params": params}
  memory = src_seg = None
  if not cfg.decoder_only:
    memory = model.apply(variables, src, method=Transformer.encode)
    src_seg = jnp.ones_like(src)
  seg = jnp.ones_like(tgt)
  y = model.apply(variables, tgt, jnp.arange(6)[None], method=Transformer.embed_targets)

  def outputs(y):  # [T]: each position's logits summed
    logits = model.apply(variables, y, seg, memory, src_seg, method=Transformer.decode_embedded)
    return logits[0].sum(-1)

  jac = np.asarray(jax.jit(jax.jacrev(outputs))(y))  # [T, 1, T, M]
  for t in range(6):
    assert np.all(jac[t, 0, t + 1:] == 0.0), f"position {t} depends on later inputs"
    assert np.abs(jac[t, 0, :t + 1]).sum() > 0


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_source_padding_does_not_change_outputs(norm_position):
  _, model, params = tiny_model(norm_position=norm_position)
  src = random_ids(3, (2, 5))
  tgt = random_ids(4, (2, 4)).at[1, 3].set(0)  # one padded target position too
  padded_src = jnp.pad(src, ((0, 0), (0, 4)))
  apply = jax.jit(lambda s, t: model.apply({"params": params}, s, t))
  a, b = apply(src, tgt), apply(padded_src, tgt)
  real = np.asarray(tgt != 0)
  np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], atol=1e-5, rtol=1e-5)


def test_jit_equals_eager_and_dropout_is_keyed():
  _, model, params = tiny_model(dropout_rate=0.3, attention_dropout_rate=0.1)
  src, tgt = random_ids(5, (2, 5)), random_ids(6, (2, 4))
  f = lambda p, s, t: model.apply({"params": p}, s, t)  # noqa: E731
  np.testing.assert_allclose(np.asarray(jax.jit(f)(params, src, tgt)),
                             np.asarray(f(params, src, tgt)), atol=1e-5, rtol=1e-5)

  @jax.jit
  def train(key):
    return model.apply({"params": params}, src, tgt, deterministic=False,
                       rngs={"dropout": key})
  k0, k1 = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  np.testing.assert_array_equal(np.asarray(train(k0)), np.asarray(train(k0)))
  assert float(jnp.abs(train(k0) - train(k1)).max()) > 1e-3


def test_shift_right_is_segment_aware():
  targets = jnp.array([[7, 8, 2, 9, 2, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(np.asarray(shift_right(targets, segments, bos_id=1)),
                                [[1, 7, 8, 1, 9, 0]])


def test_learned_scale_starts_at_the_paper_scale():
  _, model, params = tiny_model()
  _, learned_model, learned_params = tiny_model(attention_scale="learned")
  # Same initial weights apart from the per-head temperatures, which start at 1/sqrt(d_k).
  scales = [x for path, x in jax.tree_util.tree_leaves_with_path(learned_params)
            if path[-1].key == "scale" and "attention" in str(path[-2].key)]
  assert len(scales) == 1 + 2 and all(np.allclose(s, 16 ** -0.5) for s in scales)
  src, tgt = random_ids(7, (2, 5)), random_ids(8, (2, 4))
  np.testing.assert_allclose(np.asarray(learned_model.apply({"params": learned_params}, src, tgt)),
                             np.asarray(model.apply({"params": params}, src, tgt)), atol=1e-5)


def test_per_site_scale_overrides():
  cfg = TransformerConfig.tiny(attention_scale="none", cross_attention_scale="inv_dk")
  assert [cfg.scale_policy(k).kind for k in ("encoder_self", "decoder_self", "cross")] == [
      "none", "none", "inv_dk"]
  _, model, params = tiny_model(encoder_self_attention_scale="qk_norm")
  assert "scale" in params["encoder"]["encoder_0"]["self_attention"]
  assert "scale" not in params["decoder"]["decoder_0"]["self_attention"]


def test_attention_weights_are_sown():
  _, model, params = tiny_model()
  src, tgt = random_ids(9, (2, 5)), random_ids(10, (2, 4))
  _, state = model.apply({"params": params}, src, tgt, mutable=["intermediates"])
  weights = state["intermediates"]["decoder"]["decoder_0"]["cross_attention"]["attention_weights"][0]
  assert weights.shape == (2, 4, 4, 5)
  np.testing.assert_allclose(np.asarray(weights.sum(-1)), 1.0, rtol=1e-5)


def test_bfloat16_compute_stays_close_to_float32():
  _, model, params = tiny_model()
  _, model16, _ = tiny_model(dtype="bfloat16")
  src, tgt = random_ids(11, (2, 5)), random_ids(12, (2, 4))
  a = jax.jit(model.apply)({"params": params}, src, tgt)
  b = jax.jit(model16.apply)({"params": params}, src, tgt)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.1)


@pytest.mark.parametrize("changes,message", [
    ({"d_model": 60, "num_heads": 8}, "d_model=60 is not divisible by num_heads=8"),
    ({"attention_scale": "sqrt"}, "attention_scale: unknown attention scale 'sqrt'"),
    ({"num_decoder_layers": 0}, "num_decoder_layers=0 must be a positive integer"),
    ({"vocab_size": -3}, "vocab_size=-3 must be a positive integer"),
    ({"dropout_rate": 1.0}, r"dropout_rate=1.0 must be in \[0, 1\)"),
    ({"norm_position": "sandwich"}, "norm_position='sandwich' is not one of post, pre"),
    ({"share_embeddings": True, "target_vocab_size": 10}, "share_embeddings needs one vocabulary"),
    ({"scan_layers": "yes"}, "scan_layers='yes' must be True or False"),
    ({"cross_attention_scale": "1/8"}, "cross_attention_scale: unknown attention scale '1/8'"),
    ({"attention_bias": 0}, "attention_bias=0 must be True or False"),
])
def test_invalid_config_names_the_values(changes, message):
  with pytest.raises(ValueError, match=message):
    TransformerConfig.tiny(**changes)


def test_from_mapping_names_unknown_fields():
  good = dataclasses.asdict(TransformerConfig.tiny())
  assert TransformerConfig.from_mapping(good) == TransformerConfig.tiny()
  with pytest.raises(ValueError, match="unknown TransformerConfig field.*d_modle"):
    TransformerConfig.from_mapping({**good, "d_modle": 3})
  with pytest.raises(ValueError, match="unknown model preset 'huge'"):
    preset("huge")


@pytest.mark.parametrize("overrides", [{"scan_layers": True}, {"remat": True},
                                       {"scan_layers": True, "remat": True}],
                         ids=["scan", "remat", "scan_remat"])
def test_scan_and_remat_give_identical_numbers(overrides):
  """The fast paths of issue 7 against the plain loop: same loss and gradients."""
  from transformer.params import stack_layers, unstack_layers
  cfg, model, params = tiny_model()
  fast_cfg = cfg.replace(**overrides)
  fast = Transformer(fast_cfg)
  fast_params = stack_layers(params, cfg) if fast_cfg.scan_layers else params
  src, tgt = random_ids(13, (2, 5)), random_ids(14, (2, 4))

  def loss(m):
    return lambda p: jnp.mean(jax.nn.log_softmax(m.apply({"params": p}, src, tgt))[..., 5])
  ref_loss, ref_grad = jax.jit(jax.value_and_grad(loss(model)))(params)
  fast_loss, fast_grad = jax.jit(jax.value_and_grad(loss(fast)))(fast_params)
  if fast_cfg.scan_layers:
    fast_grad = unstack_layers(fast_grad, cfg)
    assert count_parameters(fast_cfg) == count_parameters(cfg)
  np.testing.assert_allclose(float(fast_loss), float(ref_loss), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6,
                                                       rtol=1e-5), fast_grad, ref_grad)


@pytest.mark.parametrize("policy", ["learned", "qk_norm", "qk_norm+softcap:3"])
def test_parameterised_policies_match_a_numpy_reference(policy):
  """MultiHeadAttention with a learned temperature or QK-norm, written out in NumPy."""
  from transformer.layers import MultiHeadAttention
  cfg = TransformerConfig.tiny(attention_scale=policy, attention_bias=True)
  mha = MultiHeadAttention(cfg, "encoder_self")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 64))
  mask = jnp.ones((2, 1, 5, 5), bool).at[1, :, :, 3:].set(False)
  params = mha.init(jax.random.PRNGKey(1), x, x, mask)["params"]
  # A non-trivial learned factor per head, so the test sees it used per head.
  params = {**params, "scale": jnp.array([0.5, 1.0, 2.0, 3.0]) * params["scale"]}
  out = mha.apply({"params": params}, x, x, mask)

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xn = np.asarray(x, np.float64)
  proj = lambda name: np.einsum("btm,mhd->bthd", xn, p[name]["kernel"]) + p[name]["bias"]  # noqa
  q, k, v = proj("query"), proj("key"), proj("value")
  if policy.startswith("qk_norm"):
    q = q / np.sqrt((q ** 2).sum(-1, keepdims=True) + 1e-6)
    k = k / np.sqrt((k ** 2).sum(-1, keepdims=True) + 1e-6)
  logits = np.einsum("bthd,bshd->bhts", q, k) * p["scale"][None, :, None, None]
  if policy.endswith("softcap:3"):
    logits = 3.0 * np.tanh(logits / 3.0)
  np.testing.assert_allclose(np.asarray(out), numpy_heads_out(logits, mask, v, p), atol=2e-5,
                             rtol=2e-5)


def numpy_heads_out(logits, mask, v, p):
  """The masked softmax, the value sum and W^O (with its bias) in float64 NumPy."""
  logits = np.where(np.asarray(mask), logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  heads = np.einsum("bhts,bshd->bthd", w, v)
  return np.einsum("bthd,hdm->btm", heads, p["out"]["kernel"]) + p["out"]["bias"]


def test_no_positional_encoding_adds_nothing_and_has_no_parameters():
  from transformer.layers import PositionalEncoding
  cfg = TransformerConfig.tiny(positional_encoding="none")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 64)), jnp.float32)
  positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
  variables = PositionalEncoding(cfg).init(jax.random.key(0), x, positions)
  assert not variables
  np.testing.assert_array_equal(PositionalEncoding(cfg).apply(variables, x, positions), x)
  learned = TransformerConfig.tiny(positional_encoding="learned")
  assert count_parameters(learned) - count_parameters(cfg) == 2 * 128 * 64  # both tables
