"""Dropout keys: JAX's Threefry, or a cheap counter hash that compiles faster on CPU.

`dropout_rng` (the experiment config's key) picks the PRNG implementation of the key
that `transformer.step` derives each step's dropout masks from:

  threefry  JAX's default Threefry-2x32 (20 rounds). On CPU, XLA emits each use (every
            `make_rng` fold-in, the scan's per-layer split and each mask) as its own
            five-iteration loop: about a fifth of the training step's compile time
            for Transformer-base (BUILD_NOTES.md).
  hash      the same PRNG interface built from a 32-bit integer mixer (Wellons' improved
            "lowbias32": two xor-shift-multiply rounds); keys derive by a 4-round
            Feistel network over their two words, bits by two keyed mixer rounds over an
            element counter. Straight-line integer code that fuses into its neighbours.

Both are deterministic functions of (seed, step, device, layer, site). `hash` is a
statistical generator for dropout masks, not a cryptographic one: its tests check the
keep rate, a chi-square of uniformity, neighbour correlations, that masks of split and
folded-in keys agree as often as independent masks would, and that every scanned layer,
device and step gets its own key.
Parameters are always initialised with Threefry, whatever this says.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.extend.random as jex_random
import numpy as np
from jax import Array, lax

DROPOUT_RNGS = ("threefry", "hash")

_GOLDEN = np.uint32(0x9E3779B9)  # 2^32 / golden ratio: the Weyl increment
_ROUND_CONSTANTS = tuple(np.uint32(c) for c in (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344))


def mix32(x: Array) -> Array:
  """Wellons' lowbias32 (improved constants): a bijective 32-bit mixer, uint32 -> uint32."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x21F0AAAD)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x735A2D97)
  return x ^ (x >> 15)


def _feistel(k0: Array, k1: Array, data: Array) -> tuple[Array, Array]:
  """Four Feistel rounds with mix32 as round function: (k0, k1) keyed by `data`."""
  left, right = k0, k1 ^ mix32(data + _GOLDEN)
  for c in _ROUND_CONSTANTS:
    left, right = right, left ^ mix32(right + c)
  return left, right


def _seed(seed: Array) -> Array:
  seed = jnp.asarray(seed)
  hi = (seed.astype(jnp.uint64) >> 32).astype(jnp.uint32) if seed.dtype.itemsize == 8 \
      else jnp.zeros((), jnp.uint32)
  lo = seed.astype(jnp.uint32)
  return jnp.stack(_feistel(lo, hi, jnp.zeros((), jnp.uint32)))


def _fold_in(key: Array, data: Array) -> Array:
  return jnp.stack(_feistel(key[0], key[1], jnp.asarray(data, jnp.uint32)))


def _split(key: Array, shape: tuple[int, ...]) -> Array:
  n = int(np.prod(shape))
  counter = lax.iota(jnp.uint32, n) + np.uint32(1) if n else jnp.zeros((0,), jnp.uint32)
  k0, k1 = _feistel(key[0], key[1] ^ np.uint32(0xA5A5A5A5), counter)
  return jnp.stack([k0, k1], axis=-1).reshape(*shape, 2)


def _counter(shape: tuple[int, ...]) -> Array:
  """The row-major element index, uint32 (arrays up to 2^32 elements)."""
  n = int(np.prod(shape))
  if n >= 2 ** 32:
    raise ValueError(f"the 'hash' PRNG draws at most 2^32 values at once, asked for {shape}")
  return lax.iota(jnp.uint32, n).reshape(shape)


def _bits32(key: Array, counter: Array) -> Array:
  return mix32(mix32(counter * _GOLDEN ^ key[0]) + key[1])


def _random_bits(key: Array, bit_width: int, shape: tuple[int, ...]) -> Array:
  shape = tuple(shape)
  # The key is a chain of scalar fold-ins (one per name in flax's module path). Left
  # free, XLA fuses that chain into the element loop, and LLVM's loop vectorizer then
  # takes minutes over it: the barrier makes the key a computed input of the loop.
  key = lax.optimization_barrier(key)
  if bit_width == 64:
    bits = _bits32(key, _counter((*shape, 2)))
    hi, lo = bits[..., 0].astype(jnp.uint64), bits[..., 1].astype(jnp.uint64)
    return (hi << 32) | lo
  bits = _bits32(key, _counter(shape))
  if bit_width == 32:
    return bits
  dtype = {8: jnp.uint8, 16: jnp.uint16}[bit_width]
  return (bits >> (32 - bit_width)).astype(dtype)  # the high bits mix best


HASH_IMPL = jex_random.define_prng_impl(
    key_shape=(2,), seed=_seed, split=_split, random_bits=_random_bits, fold_in=_fold_in,
    name="lowbias32_hash", tag="lbh")


def check_name(name: str) -> None:
  """Raises ValueError (one line) unless `name` is one of DROPOUT_RNGS."""
  if name not in DROPOUT_RNGS:
    raise ValueError(f"dropout_rng={name!r} is not one of {', '.join(DROPOUT_RNGS)}")


def dropout_key(key_data: Array, name: str) -> Array:
  """A typed key over the run's uint32 key data: for 'threefry' of JAX's default
  implementation (Threefry unless JAX_DEFAULT_PRNG_IMPL says otherwise, the one the run's
  key was made with), for 'hash' of HASH_IMPL."""
  check_name(name)
  if name == "threefry":
    return jax.random.wrap_key_data(key_data)
  words = jnp.asarray(key_data, jnp.uint32).reshape(-1)
  key = words[:2]
  for i in range(2, words.shape[0]):  # a wider default key (e.g. rbg's 4 words): fold the rest
    key = _fold_in(key, words[i])
  return jax.random.wrap_key_data(key, impl=HASH_IMPL)
