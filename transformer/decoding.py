"""Autoregressive decoding: greedy, sampling and beam search over a key/value cache.

The searches are written against a `step_fn(tokens_N, position, state) -> (logp_NV, state)`
so they can be tested on toy distributions; `model_step_fn` builds the real one from a
Transformer, with the encoder run once and the cross-attention keys/values cached once.

Shape legend: B batch, K beam, N = B*K flattened rows, L output length, V vocabulary, S source.
Outputs hold the tokens after BOS: the sequence, EOS, then padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from transformer.model import Transformer

StepFn = Callable[[Array, Array, Any], tuple[Array, Any]]
NEG_INF = -1.0e9  # finite, so that sums of scores stay finite


def default_max_length(inputs_BS: Array, pad_id: int = 0, extra: int = 50) -> int:
  """Longest source length + 50: the paper's §6.1 output limit (input length + 50)."""
  return int(jnp.max(jnp.sum(inputs_BS != pad_id, axis=-1))) + extra


def model_step_fn(model: Transformer, params, inputs_BS: Array | None, batch_size: int,
                  max_length: int, repeat: int = 1) -> tuple[StepFn, Any]:
  """The Transformer as a step function, and its initial cache.

  Each source row is repeated `repeat` times (beams) before the cache is built.
  Decoder-only models take inputs_BS=None and `batch_size` rows.
  """
  cfg = model.config
  variables = {"params": params}
  memory = memory_seg = None
  if not cfg.decoder_only:
    memory_seg = (inputs_BS != cfg.pad_id).astype(jnp.int32)
    memory = model.apply(variables, inputs_BS, memory_seg, method=Transformer.encode)
    memory, memory_seg = (jnp.repeat(x, repeat, axis=0) for x in (memory, memory_seg))
  rows = batch_size * repeat
  dummy = jnp.zeros((rows, max_length), jnp.int32)
  _, state = model.apply(variables, memory, memory_seg, dummy,
                         targets_segment_ids=jnp.ones_like(dummy), decode=True,
                         mutable=["cache"], method=Transformer.decode)

  def step_fn(tokens_N, position, cache):
    tokens_N1 = tokens_N[:, None]
    logits, new_state = model.apply(
        {"params": params, "cache": cache}, memory, memory_seg, tokens_N1,
        targets_segment_ids=jnp.ones_like(tokens_N1),
        targets_positions=jnp.full_like(tokens_N1, position), decode=True,
        mutable=["cache"], method=Transformer.decode)
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32)), new_state["cache"]

  return step_fn, state["cache"]


def _autoregress(step_fn: StepFn, state, batch_size: int, max_length: int, choose, *,
                 bos_id: int, eos_id: int, pad_id: int, rng: Array | None = None,
                 prompt_BP: Array | None = None) -> Array:
  """Up to max_length steps, choosing each token with `choose(logp, key)`; -> [B, L].

  The loop stops once every row has emitted EOS: the rest would be padding anyway, and a
  translation ends long before its source length + 50, so greedy evaluation runs a
  fraction of the steps.
  """
  prompt_len = 0 if prompt_BP is None else prompt_BP.shape[1]
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def cond(carry):
    position, _, done_B, _, _ = carry
    return (position < max_length) & ~jnp.all(done_B)

  def body(carry):
    position, token_B, done_B, tokens_BL, state = carry
    logp_BV, state = step_fn(token_B, position, state)
    new_B = choose(logp_BV, jax.random.fold_in(rng, position))
    if prompt_len:  # the prompt's tokens are forced (language-model continuation)
      forced = jnp.take(prompt_BP, jnp.minimum(position, prompt_len - 1), axis=1)
      new_B = jnp.where((position < prompt_len) & (forced != pad_id), forced, new_B)
    new_B = jnp.where(done_B, pad_id, new_B).astype(jnp.int32)
    tokens_BL = jax.lax.dynamic_update_slice(tokens_BL, new_B[:, None], (0, position))
    return position + 1, new_B, done_B | (new_B == eos_id), tokens_BL, state

  init = (jnp.array(0), jnp.full((batch_size,), bos_id, jnp.int32),
          jnp.zeros((batch_size,), bool), jnp.full((batch_size, max_length), pad_id, jnp.int32),
          state)
  return jax.lax.while_loop(cond, body, init)[3]


def greedy_search(step_fn: StepFn, state, batch_size: int, max_length: int, *,
                  bos_id: int = 1, eos_id: int = 2, pad_id: int = 0) -> Array:
  return _autoregress(step_fn, state, batch_size, max_length,
                      lambda logp, _: jnp.argmax(logp, axis=-1),
                      bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)


def sample_search(step_fn: StepFn, state, batch_size: int, max_length: int, rng: Array, *,
                  temperature: float = 1.0, top_k: int = 0, prompt_BP: Array | None = None,
                  bos_id: int = 1, eos_id: int = 2, pad_id: int = 0) -> Array:
  """Ancestral sampling at a temperature, optionally from the top-k tokens only."""
  if temperature <= 0:
    raise ValueError(f"temperature={temperature} must be positive (use greedy for 0)")

  def choose(logp_BV, key):
    logits = logp_BV / temperature
    if top_k:
      kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)

  return _autoregress(step_fn, state, batch_size, max_length, choose, rng=rng,
                      prompt_BP=prompt_BP, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)


def length_penalty(length: Array | int, alpha: float) -> Array:
  """((5 + |Y|) / 6)^alpha, the GNMT length penalty the paper uses with alpha = 0.6 (§6.1)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(state, beam_idx_BJ: Array, batch_size: int, beam_size: int):
  """Row (b, j) of every [B*K]-row leaf of the decoder state <- row (b, beam_idx[b, j]).

  The model's cache leaves are [(layers,) B*K, L, H, D], so their row axis is ndim - 4;
  its step counter is shared by all rows; other leaves have rows first.
  """
  def gather(path, x):
    name = getattr(path[-1], "key", None) if path else None
    if name == "cache_index" or x.ndim == 0:
      return x
    axis = x.ndim - 4 if name in ("cached_key", "cached_value") else 0
    shape = x.shape[:axis] + (batch_size, beam_size) + x.shape[axis + 1:]
    idx = beam_idx_BJ.reshape((1,) * axis + beam_idx_BJ.shape + (1,) * (x.ndim - axis - 1))
    return jnp.take_along_axis(x.reshape(shape), idx, axis=axis + 1).reshape(x.shape)
  return jax.tree_util.tree_map_with_path(gather, state)


def beam_search(step_fn: StepFn, state, batch_size: int, beam_size: int, max_length: int, *,
                alpha: float = 0.6, bos_id: int = 1, eos_id: int = 2,
                pad_id: int = 0) -> tuple[Array, Array]:
  """Beam search with length penalty (§6.1: beam 4, alpha 0.6).

  Each step ranks the 2K best extensions; those among the top K that end in EOS are
  finished, and the K best that do not end stay alive. `state` has B*K rows (each source
  repeated K times). Returns the K best finished sequences [B, K, L] (best first) and
  their length-normalised log-probabilities [B, K]. A sequence still alive at max_length
  counts as finished there.
  """
  B, K, L = batch_size, beam_size, max_length

  def cond(carry):
    i, _, alive_logp, _, finished_score, _ = carry
    # Log-probabilities only fall, and the penalty peaks at length L (alpha >= 0), so the
    # best alive beam can reach at most alive_logp / lp(L). Stop once it cannot beat the
    # worst kept finished sequence of any row.
    best_possible = alive_logp[:, 0] / length_penalty(L, alpha)
    return (i < L) & ~jnp.all(finished_score[:, -1] >= best_possible)

  def body(carry):
    i, alive_seq, alive_logp, finished_seq, finished_score, state = carry
    logp_NV, state = step_fn(_previous_tokens(alive_seq, i, bos_id), i, state)
    V = logp_NV.shape[-1]
    cand_logp = (alive_logp[:, :, None] + logp_NV.reshape(B, K, V)).reshape(B, K * V)
    top_logp, top_idx = jax.lax.top_k(cand_logp, 2 * K)        # [B, 2K]
    beam_idx, token = top_idx // V, (top_idx % V).astype(jnp.int32)
    seq = jnp.take_along_axis(alive_seq, beam_idx[:, :, None], axis=1)  # [B, 2K, L]
    seq = jax.lax.dynamic_update_slice(seq, token[:, :, None], (0, 0, i))
    is_eos = token == eos_id
    last_step = i == L - 1

    # Alive: the best K candidates that did not just end.
    alive_cand = jnp.where(is_eos, NEG_INF, top_logp)
    alive_logp, keep = jax.lax.top_k(alive_cand, K)
    alive_seq = jnp.take_along_axis(seq, keep[:, :, None], axis=1)
    state = _gather_beams(state, jnp.take_along_axis(beam_idx, keep, axis=1), B, K)

    # Finished: the old K plus the candidates among the top K that just ended (at the last
    # step, all top K). Only the top K may end, as in fairseq, so beam size 1 is greedy.
    ended = (is_eos | last_step) & (jnp.arange(2 * K) < K)[None, :]
    new_score = jnp.where(ended & (top_logp > NEG_INF / 2), top_logp / length_penalty(i + 1, alpha),
                          NEG_INF)
    all_seq = jnp.concatenate([finished_seq, seq], axis=1)
    all_score = jnp.concatenate([finished_score, new_score], axis=1)
    finished_score, keep = jax.lax.top_k(all_score, K)
    finished_seq = jnp.take_along_axis(all_seq, keep[:, :, None], axis=1)
    return i + 1, alive_seq, alive_logp, finished_seq, finished_score, state

  alive_seq = jnp.full((B, K, L), pad_id, jnp.int32)
  alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (K - 1), jnp.float32), (B, 1))
  finished_seq = jnp.full((B, K, L), pad_id, jnp.int32)
  finished_score = jnp.full((B, K), NEG_INF, jnp.float32)
  init = (jnp.array(0), alive_seq, alive_logp, finished_seq, finished_score, state)
  _, _, _, finished_seq, finished_score, _ = jax.lax.while_loop(cond, body, init)
  # Tokens after a sequence's EOS are padding.
  after_eos = jnp.cumsum(jnp.cumsum(finished_seq == eos_id, axis=-1), axis=-1) > 1
  return jnp.where(after_eos, pad_id, finished_seq), finished_score


def _previous_tokens(alive_seq_BKL: Array, i: Array, bos_id: int) -> Array:
  """The previous step's tokens, [B*K]; BOS at step 0."""
  prev = jax.lax.dynamic_index_in_dim(alive_seq_BKL, jnp.maximum(i - 1, 0), axis=2,
                                      keepdims=False)
  return jnp.where(i == 0, bos_id, prev).reshape(-1)


# Model-level entry points.

def greedy_decode(model: Transformer, params, inputs_BS: Array, *,
                  max_length: int | None = None) -> Array:
  """Greedy translation of a batch of source ids; -> [B, max_length]."""
  cfg = model.config
  max_length = max_length or default_max_length(inputs_BS, cfg.pad_id)
  step_fn, cache = model_step_fn(model, params, inputs_BS, inputs_BS.shape[0], max_length)
  return greedy_search(step_fn, cache, inputs_BS.shape[0], max_length, bos_id=cfg.bos_id,
                       eos_id=cfg.eos_id, pad_id=cfg.pad_id)


def beam_decode(model: Transformer, params, inputs_BS: Array, *, beam_size: int = 4,
                alpha: float = 0.6, max_length: int | None = None) -> tuple[Array, Array]:
  """Beam-search translation; -> (sequences [B, K, L] best first, scores [B, K])."""
  cfg = model.config
  max_length = max_length or default_max_length(inputs_BS, cfg.pad_id)
  B = inputs_BS.shape[0]
  step_fn, cache = model_step_fn(model, params, inputs_BS, B, max_length, repeat=beam_size)
  return beam_search(step_fn, cache, B, beam_size, max_length, alpha=alpha, bos_id=cfg.bos_id,
                     eos_id=cfg.eos_id, pad_id=cfg.pad_id)


def sample_decode(model: Transformer, params, rng: Array, *, batch_size: int, max_length: int,
                  inputs_BS: Array | None = None, prompt_BP: Array | None = None,
                  temperature: float = 1.0, top_k: int = 0) -> Array:
  """Samples continuations (language models: prompt_BP; translation: inputs_BS)."""
  cfg = model.config
  step_fn, cache = model_step_fn(model, params, inputs_BS, batch_size, max_length)
  return sample_search(step_fn, cache, batch_size, max_length, rng, temperature=temperature,
                       top_k=top_k, prompt_BP=prompt_BP, bos_id=cfg.bos_id, eos_id=cfg.eos_id,
                       pad_id=cfg.pad_id)
