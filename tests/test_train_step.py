"""The per-device step, the loss, the optimizer and the two parallel backends (4 CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import train_fixtures as fx
from transformer import losses, optim, parallel, step as step_lib


def _numpy_smoothed_target(shape, targets, eps):
  v = shape[-1]
  q = np.full(shape, eps / v)
  np.put_along_axis(q, targets[..., None], 1 - eps + eps / v, axis=-1)
  return q


def _numpy_smoothed_ce(logits, targets, eps):
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return -(_numpy_smoothed_target(logits.shape, targets, eps) * logp).sum(-1)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_and_its_gradient_match_numpy(eps):
  rng = np.random.RandomState(4)
  logits = (4 * rng.randn(2, 5, 11)).astype(np.float32)
  targets = rng.randint(0, 11, (2, 5)).astype(np.int32)
  loss, nll = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), eps)
  wide = logits.astype(np.float64)
  np.testing.assert_allclose(loss, _numpy_smoothed_ce(wide, targets, eps), rtol=1e-5)
  np.testing.assert_allclose(nll, _numpy_smoothed_ce(wide, targets, 0.0), rtol=1e-5)
  # d loss / d logits = softmax - smoothed target.
  grad = jax.grad(lambda z: losses.cross_entropy(z, jnp.asarray(targets), eps)[0].sum())(
      jnp.asarray(logits))
  p = np.exp(wide - wide.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(grad, p - _numpy_smoothed_target(wide.shape, targets, eps),
                             atol=1e-6)


def test_cross_entropy_is_finite_for_huge_logits():
  # logsumexp subtracts the row max: exp(1e4) would overflow float32, the loss must not.
  logits = np.array([[[1e4, 0.0, -1e4], [2.0, 1e4, 1e4]]], np.float32)
  targets = np.array([[0, 2]], np.int32)
  loss, nll = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 0.0)
  np.testing.assert_allclose(nll, [[0.0, np.log(2.0)]], atol=1e-3)  # float32 spacing at 1e4
  np.testing.assert_array_equal(loss, nll)


def test_one_step_matches_a_numpy_loss_and_updates_params():
  model, _, train_step, state = fx.tiny_setup()
  batch = fx.copy_batch(np.random.RandomState(3), 8)
  dp = parallel.DataParallel("pmap")
  new_state, metrics = dp.map_train_step(train_step)(dp.put_replicated(state),
                                                     dp.put_batch(batch), np.zeros(2, np.uint32))
  m = dp.fetch(metrics)
  logits = np.asarray(model.apply({"params": state.params}, batch["inputs"], batch["targets"]),
                      np.float64)
  mask = batch["targets"] != 0
  expected = _numpy_smoothed_ce(logits, batch["targets"], 0.1)[mask].mean()
  assert m["token_count"] == mask.sum()
  np.testing.assert_allclose(m["loss_sum"] / m["token_count"], expected, rtol=1e-5)
  assert m["nonfinite"] == 0
  new = dp.fetch(new_state)
  assert int(new.step) == 1
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), new.params, state.params)
  assert all(jax.tree.leaves(changed))


def test_loss_falls_on_copy_task():
  losses_per_step = fx.run_fixed_steps("pmap", 40, global_batch=16)
  assert np.mean(losses_per_step[-5:]) < np.mean(losses_per_step[:3]) - 0.5  # nats


def test_pmap_and_shard_map_agree_with_dropout():
  a = fx.run_fixed_steps("pmap", 3, dropout_rate=0.1)
  b = fx.run_fixed_steps("shard_map", 3, dropout_rate=0.1)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_one_and_four_devices_agree_on_the_same_global_batch():
  """Tolerance rtol 2e-5: only the order of floating-point sums differs (dropout off)."""
  one = fx.run_fixed_steps("shard_map", 4, devices=jax.devices()[:1])
  four = fx.run_fixed_steps("shard_map", 4)
  np.testing.assert_allclose(one, four, rtol=2e-5)


def test_dropout_keys_differ_across_devices_and_steps():
  dp = parallel.DataParallel("shard_map")
  rng = jax.random.key_data(jax.random.key(0))

  def keys(step):
    fn = jax.shard_map(lambda r, s: jax.random.key_data(
        step_lib.step_dropout_key(r, s))[None],
                       mesh=dp.mesh, in_specs=(P(), P()), out_specs=P(step_lib.AXIS))
    return np.asarray(fn(rng, jnp.int32(step)))

  k0, k1 = keys(0), keys(1)
  all_keys = {tuple(k) for k in np.concatenate([k0, k1])}
  assert k0.shape == (4, 2) and len(all_keys) == 8


def test_dropout_under_nn_scan_draws_a_different_mask_per_layer():
  """The run's key data (JAX's default PRNG) through flax's nn.scan: one mask per layer."""
  import flax.linen as nn  # noqa: PLC0415

  class Layer(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      return x, nn.Dropout(0.5, deterministic=False)(jnp.ones_like(x))

  stack = nn.scan(Layer, variable_axes={}, split_rngs={"dropout": True}, length=4)
  key = jax.random.wrap_key_data(jnp.array([0, 9], jnp.uint32))
  _, masks = stack().apply({}, jnp.ones((8, 256)), None, rngs={"dropout": key})
  masks = np.asarray(masks) > 0
  assert masks.shape == (4, 8, 256)
  assert len({m.tobytes() for m in masks}) == 4
  assert abs(masks.mean() - 0.5) < 0.05


def test_nan_guard_keeps_state_and_flags():
  _, _, train_step, state = fx.tiny_setup()
  poisoned = jax.tree.map(lambda x: x, state.params)
  leaf = poisoned["target_embed"]["embedding"]
  poisoned["target_embed"]["embedding"] = leaf.at[5, 0].set(jnp.inf)
  state = state.replace(params=poisoned)
  dp = parallel.DataParallel("shard_map")
  new_state, metrics = dp.map_train_step(train_step)(
      dp.put_replicated(state), dp.put_batch(fx.copy_batch(np.random.RandomState(0), 8)),
      np.zeros(2, np.uint32))
  assert dp.fetch(metrics)["nonfinite"] == 1
  same = jax.tree.map(lambda a, b: np.array_equal(a, b, equal_nan=True),
                      dp.fetch(new_state.params), poisoned)
  assert all(jax.tree.leaves(same))


def test_gradient_accumulation_equals_the_full_batch():
  """Two micro-batches of equal token counts under optax.MultiSteps = one step on both.

  With plain SGD (rate 1) the update is the gradient itself, so the comparison is of
  gradients. Not Adam: it divides each gradient by its own magnitude, so a gradient that
  is zero in exact arithmetic (rounding noise of ~1e-10, different on AVX2 and AVX-512
  CPUs) would become an update of +-lr of either sign.
  """
  model, _, _, state = fx.tiny_setup()
  rs = np.random.RandomState(0)
  full = {k: np.tile(v, (2, 1)) for k, v in fx.copy_batch(rs, 4).items()}
  full["inputs"][:, :] = rs.randint(3, fx.VOCAB, size=full["inputs"].shape)  # no padding
  full["targets"] = full["inputs"].copy()
  dp = parallel.DataParallel("shard_map")
  rng = np.zeros(2, np.uint32)

  def mapped(tx):
    step = step_lib.make_train_step(model, tx, lambda s: jnp.float32(1.0), label_smoothing=0.1)
    return dp.map_train_step(step), dp.put_replicated(state.replace(opt_state=tx.init(state.params)))

  step1, s1 = mapped(optax.sgd(1.0))
  s1, _ = step1(s1, dp.put_batch(full), rng)
  step2, s2 = mapped(optax.MultiSteps(optax.sgd(1.0), every_k_schedule=2).gradient_transformation())
  for half in (slice(0, 4), slice(4, 8)):
    s2, _ = step2(s2, dp.put_batch({k: v[half] for k, v in full.items()}), rng)
  moved = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), dp.fetch(s1.params),
                       state.params)
  assert max(float(np.abs(x).max()) for x in jax.tree.leaves(moved)) > 1e-3  # a real step
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               dp.fetch(s1.params), dp.fetch(s2.params))


def test_make_optimizer_updates_once_per_grad_accum_steps():
  """grad_accum_steps=2: the first micro-step leaves params as they were, the second moves them."""
  _, _, step2, state = fx.tiny_setup(grad_accum_steps=2)
  dp = parallel.DataParallel("shard_map")
  p2, s = dp.map_train_step(step2), dp.put_replicated(state)
  batch = dp.put_batch(fx.copy_batch(np.random.RandomState(1), 4))
  s, _ = p2(s, batch, np.zeros(2, np.uint32))
  jax.tree.map(np.testing.assert_array_equal, dp.fetch(s.params), state.params)
  s, _ = p2(s, batch, np.zeros(2, np.uint32))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), dp.fetch(s.params), state.params)
  assert all(jax.tree.leaves(changed))


def test_paper_schedule_is_equation_3():
  d_model, warmup = 512, 4000
  schedule = optim.paper_schedule(d_model, warmup)
  for step_num in (1, 100, warmup, 10 * warmup):
    expected = d_model ** -0.5 * min(step_num ** -0.5, step_num * warmup ** -1.5)
    np.testing.assert_allclose(schedule(step_num - 1), expected, rtol=1e-6)
  cfg = optim.OptimConfig(schedule="warmup_rsqrt", learning_rate=1e-3, warmup_steps=10)
  rsqrt = optim.make_schedule(cfg, d_model, 100)
  np.testing.assert_allclose([rsqrt(4), rsqrt(9), rsqrt(39)], [5e-4, 1e-3, 5e-4], rtol=1e-6)


@pytest.mark.parametrize("weight_decay, clip", [(0.0, 0.0), (0.1, 1.0)])
def test_optimizer_is_optax_adam_with_the_papers_betas(weight_decay, clip):
  """The updates are optax.adam's (weight_decay 0) or adamw's, clipped, over 3 steps."""
  cfg = optim.OptimConfig(weight_decay=weight_decay, grad_clip_norm=clip)
  tx, _ = optim.make_optimizer(cfg, 512, 100)
  schedule = optim.paper_schedule(512, 4000)
  if weight_decay:
    reference = optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-9, weight_decay=weight_decay,
                            mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))
  else:
    reference = optax.adam(schedule, b1=0.9, b2=0.98, eps=1e-9)
  if clip:
    reference = optax.chain(optax.clip_by_global_norm(clip), reference)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "layer": {"b": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
                      "k": jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)}}
  state, ref_state = tx.init(params), reference.init(params)
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 2, jnp.float32),
                         params)
    updates, state = tx.update(grads, state, params)
    expected, ref_state = reference.update(grads, ref_state, params)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6, atol=1e-9),
                 updates, expected)
    params = optax.apply_updates(params, updates)


def test_sequence_exact_match_counts_packed_segments():
  correct = jnp.array([[1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 0, 0]], jnp.float32)
  segments = jnp.array([[1, 1, 2, 3, 3, 0], [1, 1, 2, 2, 0, 0]])
  weights = (segments != 0).astype(jnp.float32)
  exact, count = losses.sequence_exact_match(correct, weights, segments)
  assert (float(exact), float(count)) == (4.0, 5.0)  # row 0: segments 1, 3; row 1: both


@pytest.mark.parametrize("bad, message", [
    (dict(schedule="noam"), "schedule='noam' is not one of"),
    (dict(grad_accum_steps=0), "grad_accum_steps=0"),
    (dict(b2=1.0), "b2=1.0"),
])
def test_bad_optim_config_is_named(bad, message):
  with pytest.raises(ValueError, match=message):
    optim.OptimConfig(**bad)
