"""Incremental decoding against the full forward pass; greedy, beam and sampling searches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import decoding
from transformer.config import TransformerConfig
from transformer.model import Transformer, shift_right


def tiny(**overrides):
  cfg = TransformerConfig.tiny(num_encoder_layers=overrides.pop("num_encoder_layers", 1),
                               num_decoder_layers=2, **overrides)
  model = Transformer(cfg)
  ids = jnp.ones((2, 6), jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), None if cfg.decoder_only else ids,
                               ids)["params"]
  return model, params


@pytest.mark.parametrize("overrides", [{}, {"norm_position": "pre", "attention_scale": "qk_norm"},
                                       {"num_encoder_layers": 0,
                                        "positional_encoding": "learned"}],
                         ids=["post", "pre_qknorm", "decoder_only"])
def test_cached_steps_equal_the_full_forward_pass(overrides):
  model, params = tiny(**overrides)
  cfg = model.config
  src = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 3, 64).at[1, 3:].set(0)  # padded row
  tgt = jax.random.randint(jax.random.PRNGKey(2), (2, 7), 3, 64)
  inputs = None if cfg.decoder_only else src
  full = jax.jit(model.apply)({"params": params}, inputs, tgt)  # [B, T, V]
  decoder_inputs = shift_right(tgt, jnp.ones_like(tgt), cfg.bos_id)
  init = jax.jit(lambda p, i: decoding.model_step_fn(model, p, i, 2, tgt.shape[1])[1])
  cache = init(params, inputs)
  step_fn = jax.jit(lambda tokens, t, c: decoding.model_step_fn(
      model, params, inputs, 2, tgt.shape[1])[0](tokens, t, c))
  for t in range(tgt.shape[1]):
    logp, cache = step_fn(decoder_inputs[:, t], jnp.array(t), cache)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(jax.nn.log_softmax(full[:, t])),
                               atol=1e-4, rtol=1e-4, err_msg=f"step {t}")


def test_beam_of_one_equals_greedy_without_length_penalty():
  model, params = tiny()
  src = jax.random.randint(jax.random.PRNGKey(3), (3, 6), 3, 64)
  greedy = jax.jit(functools.partial(decoding.greedy_decode, model, max_length=9))(params, src)
  beams, scores = jax.jit(functools.partial(decoding.beam_decode, model, beam_size=1, alpha=0.0,
                                            max_length=9))(params, src)
  np.testing.assert_array_equal(np.asarray(beams[:, 0]), np.asarray(greedy))
  assert beams.shape == (3, 1, 9) and scores.shape == (3, 1)


def test_beam_scores_are_sorted_and_sequences_end_cleanly():
  model, params = tiny()
  src = jax.random.randint(jax.random.PRNGKey(4), (2, 6), 3, 64)
  beams, scores = jax.jit(functools.partial(decoding.beam_decode, model, beam_size=4,
                                            max_length=8))(params, src)
  scores = np.asarray(scores)
  assert np.all(np.diff(scores, axis=1) <= 0) and np.all(np.isfinite(scores))
  for row in np.asarray(beams).reshape(-1, 8):
    eos = np.flatnonzero(row == 2)
    if eos.size:
      assert np.all(row[eos[0] + 1:] == 0)
    else:
      assert np.all(row != 0)  # a sequence that ran to max_length has no padding


# A toy distribution with known probabilities (tokens: 0 pad, 1 BOS, 2 EOS, 3 'a', 4 'b').
# First token: a 0.6, b 0.4. After a: EOS 0.5, a 0.25, b 0.25. After b: EOS 0.9, a/b 0.05.
# Greedy takes a then EOS (0.30); the best sequence is b, EOS (0.36).
TOY = np.full((5, 5), 1e-9)
TOY[1, [3, 4]] = [0.6, 0.4]
TOY[3, [2, 3, 4]] = [0.5, 0.25, 0.25]
TOY[4, [2, 3, 4]] = [0.9, 0.05, 0.05]
TOY[2, 2] = TOY[0, 2] = 1.0  # after EOS (or padding) only EOS


def toy_step(tokens_N, position, state):
  return jnp.log(jnp.asarray(TOY, jnp.float32))[tokens_N], state


def test_beam_search_finds_the_sequence_greedy_misses():
  greedy = decoding.greedy_search(toy_step, (), 1, 4)
  np.testing.assert_array_equal(np.asarray(greedy), [[3, 2, 0, 0]])
  beams, scores = decoding.beam_search(toy_step, (), 1, 2, 4, alpha=0.0)
  np.testing.assert_array_equal(np.asarray(beams[0, 0]), [4, 2, 0, 0])
  np.testing.assert_allclose(np.asarray(scores[0]), np.log([0.36, 0.30]), rtol=1e-5)


def test_greedy_stops_once_every_row_has_ended():
  positions = []

  def counting_step(tokens_N, position, state):
    jax.debug.callback(lambda p: positions.append(int(p)), position)
    return toy_step(tokens_N, position, state)

  out = decoding.greedy_search(counting_step, (), 3, 40)
  jax.effects_barrier()
  np.testing.assert_array_equal(np.asarray(out), [[3, 2] + [0] * 38] * 3)
  assert sorted(positions) == [0, 1]  # two steps of 40: every row ended at the second


def test_length_penalty_is_the_papers():
  assert float(decoding.length_penalty(1, 0.6)) == pytest.approx(1.0)
  assert float(decoding.length_penalty(7, 0.6)) == pytest.approx(2.0 ** 0.6)
  # With alpha the longer hypothesis can win: log 0.2 / lp(3) > log 0.3 / lp(2) for alpha=3.
  assert np.log(0.2) / decoding.length_penalty(3, 3.0) > np.log(0.3) / decoding.length_penalty(2, 3.0)


def test_sampling_top1_is_greedy_and_prompt_is_forced():
  model, params = tiny(num_encoder_layers=0)
  prompt = jnp.array([[5, 6, 7], [8, 9, 0]])  # 0: the second row's prompt is shorter
  rng = jax.random.PRNGKey(5)
  sample = jax.jit(lambda p, r, prompt, temperature, top_k: decoding.sample_decode(
      model, p, r, batch_size=2, max_length=6, prompt_BP=prompt, temperature=temperature,
      top_k=top_k), static_argnames=("temperature", "top_k"))
  top1 = sample(params, rng, prompt, temperature=0.7, top_k=1)
  np.testing.assert_array_equal(np.asarray(top1[0, :3]), [5, 6, 7])
  np.testing.assert_array_equal(np.asarray(top1[1, :2]), [8, 9])

  @jax.jit
  def greedy_then(p):
    step_fn, cache = decoding.model_step_fn(model, p, None, 2, 6)
    return decoding._autoregress(step_fn, cache, 2, 6, lambda lp, _: jnp.argmax(lp, -1),
                                 bos_id=1, eos_id=2, pad_id=0, prompt_BP=prompt)
  np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy_then(params)))
  a = sample(params, rng, None, temperature=2.0, top_k=0)
  b = sample(params, rng, None, temperature=2.0, top_k=0)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same key, same samples
  with pytest.raises(ValueError, match="temperature=0"):
    decoding.sample_decode(model, params, rng, batch_size=2, max_length=6, temperature=0)


def test_default_max_length_is_source_plus_50():
  src = jnp.array([[5, 6, 7, 0], [5, 0, 0, 0]])
  assert decoding.default_max_length(src) == 53


def test_scanned_layers_decode_like_the_loop():
  from transformer.params import stack_layers
  model, params = tiny()
  scanned = Transformer(model.config.replace(scan_layers=True))
  scanned_params = stack_layers(params, model.config)
  src = jax.random.randint(jax.random.PRNGKey(6), (2, 6), 3, 64)
  a = jax.jit(functools.partial(decoding.beam_decode, model, beam_size=2, max_length=7))(
      params, src)
  b = jax.jit(functools.partial(decoding.beam_decode, scanned, beam_size=2, max_length=7))(
      scanned_params, src)
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), rtol=1e-5)
