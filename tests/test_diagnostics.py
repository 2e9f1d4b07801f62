"""Attention diagnostics on crafted inputs, and the §3.2.1 logit variance at initialisation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import diagnostics, step
from transformer.config import TransformerConfig
from transformer.model import Transformer
from transformer.params import stack_layers


def test_uniform_attention_has_entropy_log_length():
  w = jnp.full((2, 3, 4, 10), 0.1)
  stats = diagnostics.attention_stats(w, jnp.zeros((2, 3, 4, 10)))
  np.testing.assert_allclose(np.asarray(stats["entropy_mean"]), math.log(10), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["entropy_min"]), math.log(10), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(stats["saturation"]), 0.0)
  np.testing.assert_array_equal(np.asarray(stats["max_abs_logit"]), 0.0)


def test_one_hot_attention_has_zero_entropy_and_full_saturation():
  w = jax.nn.one_hot(jnp.array([[[0, 3, 2]]]), 5)  # [1, 1, 3, 5]
  stats = diagnostics.attention_stats(w)
  np.testing.assert_array_equal(np.asarray(stats["entropy_mean"]), 0.0)
  np.testing.assert_array_equal(np.asarray(stats["saturation"]), 1.0)


def test_masked_rows_and_keys_are_excluded():
  w = jnp.array([[[[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]]])  # second query row fully masked
  logits = jnp.array([[[[1.0, -3.0, 7.0], [9.0, 9.0, 9.0]]]])
  mask = jnp.array([[[[True, True, False], [False, False, False]]]])
  stats = diagnostics.attention_stats(w, logits, mask)
  np.testing.assert_allclose(np.asarray(stats["entropy_mean"]), math.log(2), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["max_abs_logit"]), 3.0)
  np.testing.assert_allclose(np.asarray(stats["logit_std"]), 2.0)


def test_rows_are_taken_from_the_mask_not_from_the_weights():
  """Weights that need not sum to 1 (sigmoid attention): a visible row summing to 0.2
  counts, a masked row does not, whatever its weights."""
  w = jnp.array([[[[0.1, 0.1, 0.0], [0.0, 0.0, 0.0], [0.3, 0.3, 0.3]]]])
  mask = jnp.array([[[[True, True, False], [True, True, True], [False, False, False]]]])
  stats = diagnostics.attention_stats(w, None, mask)
  entropy = -2 * 0.1 * math.log(0.1)
  np.testing.assert_allclose(np.asarray(stats["entropy_mean"]), entropy / 2, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["entropy_min"]), 0.0, atol=1e-7)


def model_and_batch(scale, d_model=256, num_heads=1, **overrides):
  # By default one head with d_k = 256: row A of Table 3 with h = 1.
  cfg = TransformerConfig.tiny(d_model=d_model, num_heads=num_heads, d_ff=32,
                               attention_scale=scale, num_encoder_layers=2, num_decoder_layers=1,
                               **overrides)
  model = Transformer(cfg)
  src = jax.random.randint(jax.random.PRNGKey(1), (4, 24), 3, 64)
  tgt = jax.random.randint(jax.random.PRNGKey(2), (4, 12), 3, 64)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), src, tgt)["params"]
  return model, params, {"inputs": src, "targets": tgt}


@pytest.mark.parametrize("scale,expected_var", [("none", 256.0), ("inv_sqrt_dk", 1.0)])
def test_logit_variance_at_init_shows_the_papers_argument(scale, expected_var):
  """Layer 1 sees LayerNorm-ed (unit variance) inputs: var(q.k) ~ d_k unscaled, ~1 scaled."""
  model, params, batch = model_and_batch(scale)
  stats, _ = diagnostics.Probe(model, batch)(params)
  var = stats["attn/encoder_1/self_attention/logit_std/h0"] ** 2
  assert expected_var / 2 < var < expected_var * 2, var


@pytest.mark.parametrize("attention_bias,kind", [(True, "dot_product"), (False, "dot_product"),
                                                (False, "additive")])
def test_probe_names_every_layer_and_scan_gives_the_same_numbers(attention_bias, kind):
  model, params, batch = model_and_batch("inv_sqrt_dk", d_model=32, num_heads=2,
                                         attention_bias=attention_bias, attention_kind=kind)

  stats, maps = diagnostics.Probe(model, batch)(params)
  layers = {"encoder_0/self_attention", "encoder_1/self_attention",
            "decoder_0/self_attention", "decoder_0/cross_attention"}
  assert set(maps) == layers
  assert {k.split("/", 3)[3].rsplit("/", 1)[0] for k in stats
          if k.startswith("attn/decoder_0/cross_attention/")} == {
      "entropy_mean", "entropy_min", "saturation", "max_abs_logit", "logit_std",
      "grad_norm_logits", "grad_norm_query", "grad_norm_key"}
  assert {"/".join(k.split("/")[1:3]) for k in stats} == layers
  scanned = Transformer(model.config.replace(scan_layers=True))
  scanned_stats, scanned_maps = diagnostics.Probe(scanned, batch)(
      stack_layers(params, model.config))
  assert set(scanned_stats) == set(stats)
  for key, value in stats.items():
    np.testing.assert_allclose(scanned_stats[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
  for layer in maps:
    np.testing.assert_allclose(scanned_maps[layer], maps[layer], rtol=1e-5, atol=1e-5)
  assert stats["attn/encoder_0/self_attention/entropy_mean/mean"] == pytest.approx(
      np.mean([stats[f"attn/encoder_0/self_attention/entropy_mean/h{h}"] for h in range(2)]))


def test_logit_gradient_is_the_gradient_reaching_the_logits():
  """Checked through the chain rule of a learned scale: logits = s_h * raw, so
  dL/ds_h = sum over (b, t, s) of dL/dlogits * raw; masked logits get no gradient."""
  model, params, batch = model_and_batch("learned", d_model=32, num_heads=2)
  batch["inputs"] = batch["inputs"].at[:, 20:].set(0)  # padding: masked keys
  state = diagnostics._probe_state(model, params, batch)

  def loss(params, perturbations):
    return step.loss_sums(model, params, batch, 0.0, perturbations=perturbations)["nll_sum"]

  grads, logit_grads = jax.grad(loss, argnums=(0, 1))(params, state["perturbations"])
  site = ("encoder", "encoder_1", "self_attention")
  g = logit_grads[site[0]][site[1]][site[2]]["attention_logits"]
  sown = state["intermediates"][site[0]][site[1]][site[2]]
  mask = np.asarray(sown["attention_mask"][0])
  scale = params[site[0]][site[1]][site[2]]["scale"]
  raw = np.nan_to_num(np.asarray(sown["attention_logits"][0])) / np.asarray(scale)[:, None, None]
  np.testing.assert_allclose(np.sum(np.asarray(g) * raw, axis=(0, 2, 3)),
                             grads[site[0]][site[1]][site[2]]["scale"], rtol=1e-3, atol=1e-6)
  assert not mask.all() and np.all(np.asarray(g)[~mask] == 0)
  stats, _ = diagnostics.Probe(model, batch)(params)
  assert stats["attn/encoder_1/self_attention/grad_norm_logits/h0"] > 0
