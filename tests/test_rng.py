"""The 'hash' dropout PRNG (transformer/rng.py): a valid JAX PRNG whose masks look random."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import rng as rng_lib

HASH = rng_lib.HASH_IMPL


def _key(seed: int = 0):
  return jax.random.key(seed, impl=HASH)


def test_the_mixer_is_injective_on_a_sample_and_matches_a_numpy_reference():
  x = np.arange(1 << 16, dtype=np.uint32) * np.uint32(65_537)
  out = np.asarray(rng_lib.mix32(jnp.asarray(x)))
  assert len(np.unique(out)) == len(x)
  # lowbias32 (improved constants) computed by hand in numpy: xor-shift 16, * 0x21f0aaad,
  # xor-shift 15, * 0x735a2d97, xor-shift 15.
  y = x ^ (x >> 16)
  y = y * np.uint32(0x21F0AAAD)
  y = y ^ (y >> 15)
  y = y * np.uint32(0x735A2D97)
  y = y ^ (y >> 15)
  np.testing.assert_array_equal(out, y)


def test_keys_are_deterministic_and_fold_in_split_give_distinct_keys():
  k = _key(3)
  np.testing.assert_array_equal(jax.random.key_data(k), jax.random.key_data(_key(3)))
  assert not np.array_equal(jax.random.key_data(k), jax.random.key_data(_key(4)))
  folded = np.stack([jax.random.key_data(jax.random.fold_in(k, i)) for i in range(200)])
  split = np.asarray(jax.random.key_data(jax.random.split(k, 1000)))
  assert split.shape == (1000, 2) and split.dtype == np.uint32
  everything = np.concatenate([folded, split, np.asarray(jax.random.key_data(k))[None]])
  assert len({tuple(r) for r in everything}) == len(everything)
  # jit and eager agree (no dependence on constant folding or fusion).
  jitted = jax.jit(lambda k: jax.random.key_data(jax.random.fold_in(k, 7)))(k)
  np.testing.assert_array_equal(jitted, folded[7])


@pytest.mark.parametrize("dtype,bits", [(jnp.uint8, 8), (jnp.uint16, 16), (jnp.uint32, 32)])
def test_random_bits_have_the_asked_width_and_shape(dtype, bits):
  out = jax.random.bits(_key(), (3, 5, 7), dtype)
  assert out.shape == (3, 5, 7) and out.dtype == dtype
  assert len(np.unique(np.asarray(out))) > 1


def test_uniform_bits_pass_a_chi_square_and_neighbours_are_uncorrelated():
  u = np.asarray(jax.random.uniform(_key(11), (1 << 20,)), np.float64)
  assert 0.0 <= u.min() and u.max() < 1.0
  counts = np.bincount((u * 256).astype(int), minlength=256)
  expected = len(u) / 256
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 255 + 6 * np.sqrt(2 * 255), chi2          # ~6 sigma of chi2(255)
  for lag in (1, 2, 64, 512):
    r = np.corrcoef(u[:-lag], u[lag:])[0, 1]
    assert abs(r) < 6 / np.sqrt(len(u)), (lag, r)


def test_dropout_masks_keep_the_rate_and_are_independent_across_keys():
  rate, shape = 0.1, (16, 64, 512)
  base = _key(5)
  masks = [np.asarray(jax.random.bernoulli(k, 1 - rate, shape))
           for k in [base, *jax.random.split(base, 3), jax.random.fold_in(base, 1),
                     jax.random.fold_in(jax.random.fold_in(base, 1), 0)]]
  n = masks[0].size
  for m in masks:
    assert abs(m.mean() - (1 - rate)) < 6 * np.sqrt(rate * (1 - rate) / n)
  # Two independent masks agree where both keep or both drop: p^2 + (1-p)^2.
  agree = (1 - rate) ** 2 + rate ** 2
  sigma = np.sqrt(agree * (1 - agree) / n)
  for i in range(len(masks)):
    for j in range(i + 1, len(masks)):
      assert abs((masks[i] == masks[j]).mean() - agree) < 6 * sigma, (i, j)


def test_flax_dropout_under_nn_scan_draws_a_different_mask_per_layer():

  class Layer(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      return x, nn.Dropout(0.5, deterministic=False)(jnp.ones_like(x))

  stack = nn.scan(Layer, variable_axes={}, split_rngs={"dropout": True}, length=4)
  x = jnp.ones((8, 256))
  for impl in ("threefry", "hash"):
    key = rng_lib.dropout_key(jnp.array([0, 9], jnp.uint32), impl)
    _, masks = stack().apply({}, x, None, rngs={"dropout": key})
    masks = np.asarray(masks) > 0
    assert masks.shape == (4, 8, 256)
    assert len({m.tobytes() for m in masks}) == 4
    assert abs(masks.mean() - 0.5) < 0.05


def test_bad_names_and_oversized_draws_are_refused():
  with pytest.raises(ValueError, match=r"dropout_rng='philox' is not one of threefry, hash"):
    rng_lib.check_name("philox")
  with pytest.raises(ValueError, match="at most 2\\^32"):
    jax.jit(lambda k: jax.random.bits(k, (1 << 16, 1 << 16))).lower(_key())


def test_dropout_key_wraps_the_run_key_for_either_implementation():
  data = jax.random.key_data(jax.random.key(0))
  threefry = rng_lib.dropout_key(data, "threefry")
  assert jax.random.key_impl(threefry) == jax.random.key_impl(jax.random.key(0))
  hashed = rng_lib.dropout_key(data, "hash")
  np.testing.assert_array_equal(jax.random.key_data(hashed), data)
  # A wider default key (rbg's 4 words) folds its extra words in: still a 2-word hash key.
  wide = rng_lib.dropout_key(jnp.arange(4, dtype=jnp.uint32), "hash")
  narrow = rng_lib.dropout_key(jnp.arange(2, dtype=jnp.uint32), "hash")
  assert jax.random.key_data(wide).shape == (2,)
  assert not np.array_equal(jax.random.key_data(wide), jax.random.key_data(narrow))
