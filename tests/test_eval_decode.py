"""Whole-set translation and perplexity on an untrained tiny model: batched (sorted,
padded, a final partial batch) equals one sentence at a time, in input order, with no
sentence dropped; perplexity equals a NumPy reference; params in training layouts."""

import functools
import types

import jax
import numpy as np
import pytest

from transformer import decoding, evaluation, parallel
from transformer.config import TransformerConfig
from transformer.data import DataConfig
from transformer.data.tokenizers import IdentityTokenizer
from transformer.model import Transformer

VOCAB, MAX_LEN = 32, 64


@pytest.fixture(scope="module")
def bits():
  cfg = TransformerConfig.tiny(vocab_size=VOCAB, num_encoder_layers=1, num_decoder_layers=1,
                               d_model=32, num_heads=2, d_ff=64, max_len=MAX_LEN)
  model = Transformer(cfg)
  params = jax.jit(model.init)(jax.random.key(3), np.ones((1, 8), np.int32),
                               np.ones((1, 8), np.int32))["params"]
  # A larger output scale makes an untrained model's outputs vary with its input.
  params = jax.tree.map(lambda x: x * 3.0, params)
  return types.SimpleNamespace(model=model, tokenizer=IdentityTokenizer(VOCAB),
                               data=DataConfig(), cache={}, params=params,
                               settings=types.SimpleNamespace(label_smoothing=0.1))


def _sources(lengths, seed=0):
  rs = np.random.RandomState(seed)
  return [np.append(rs.randint(4, VOCAB, size=n - 1), 2).astype(np.int32) for n in lengths]


def _strip(seq):
  seq = np.asarray(seq)
  ends = np.flatnonzero(seq == 2)
  return seq[:ends[0]] if len(ends) else seq


def test_greedy_batched_equals_alone_in_order_with_partial_batch(bits):
  lengths = [4, 6, 6, 4, 4, 6, 4]  # 7 sentences in batches of 3: the last holds one
  sources = _sources(lengths)
  batched = evaluation.translate_ids(bits, bits.params, sources, batch_size=3)
  assert len(batched) == len(sources)
  alone = {n: jax.jit(functools.partial(decoding.greedy_decode, bits.model,
                                        max_length=min(n + 50, MAX_LEN))) for n in set(lengths)}
  for src, out in zip(sources, batched):  # each alone, unpadded, limited to its length + 50
    np.testing.assert_array_equal(out, _strip(alone[len(src)](bits.params, src[None])[0]))
  # The check means something only if outputs differ from sentence to sentence.
  assert len({tuple(o.tolist()) for o in batched}) >= 3 and max(len(o) for o in batched) > 0


def test_beam_batched_equals_alone(bits):
  sources = _sources([7, 7, 7, 7], seed=1)
  batched = evaluation.translate_ids(bits, bits.params, sources, beam_size=3, alpha=0.6,
                                     batch_size=3)
  assert len(batched) == 4
  # Sources of 7 tokens are padded to width 8: beam search runs up to 8 + 50 steps.
  alone = jax.jit(lambda p, x: decoding.beam_decode(bits.model, p, x, beam_size=3, alpha=0.6,
                                                    max_length=58)[0][0, 0])
  for src, out in zip(sources, batched):
    np.testing.assert_array_equal(out, _strip(alone(bits.params, src[None])))


def test_perplexity_equals_numpy_reference_with_partial_batch(bits):
  text = lambda ids: " ".join(map(str, ids[:-1]))  # noqa: E731
  # Rows are padded to width 8 and the second batch is partial: neither may change a number.
  sources, targets = _sources([5, 5, 5], seed=2), _sources([6, 6, 6], seed=3)
  pairs = [(text(s), text(t)) for s, t in zip(sources, targets)]
  got = evaluation.perplexity(bits, bits.params, pairs, batch_size=2)
  forward = jax.jit(lambda p, s, t: bits.model.apply({"params": p}, s, t))
  nll, tokens = 0.0, 0
  for s, t in zip(sources, targets):  # each pair alone, unpadded
    logits = np.asarray(forward(bits.params, s[None], t[None]), np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                               keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    nll -= logp[np.arange(len(t)), t].sum()
    tokens += len(t)
  assert got["tokens"] == tokens
  assert got["nll"] == pytest.approx(nll / tokens, rel=1e-5)
  assert got["perplexity"] == pytest.approx(np.exp(nll / tokens), rel=1e-5)


def test_over_long_line_is_named_with_its_length_and_the_limit(bits):
  lines = ["5 6 7", " ".join(["9"] * 70), "4"]
  with pytest.raises(evaluation.InputTooLong, match=r"^line 2 is 71 tokens long \(with EOS\); "
                     r"the model takes at most 64 \(model.max_len\)$"):
    evaluation.encode_sources(bits, lines)
  cut = evaluation.encode_sources(bits, lines, truncate=True)
  assert [len(c) for c in cut] == [4, 64, 2] and cut[1][-1] == 2


@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
def test_params_in_training_layout_are_one_copy_of_the_params(bits, backend):
  dp = parallel.DataParallel(backend)
  placed = dp.put_replicated(bits.params)
  if backend == "pmap":  # the layout after a pmapped step (its sharding differs from placed's)
    placed = jax.pmap(lambda p: p, axis_name="batch")(placed)
    assert jax.tree.leaves(placed)[0].shape[0] == 4
  for layout in (placed, bits.params, jax.tree.map(np.asarray, bits.params)):
    one = evaluation.device_params(bits.model, layout)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(bits.params)):
      assert a.shape == b.shape
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="params have 1 arrays; the model has"):
    evaluation.device_params(bits.model, {"x": np.zeros(3)})
