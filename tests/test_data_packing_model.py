"""A packed batch through the model equals its examples run one by one (no cross-talk)."""

import jax
import numpy as np
import pytest

from transformer.config import TransformerConfig
from transformer.data import DataConfig, build_tokenizer, train_iterator
from transformer.model import Transformer

LENGTH = 24


@pytest.fixture(scope="module")
def packed_batch(tmp_path_factory):
  cfg = DataConfig(dataset="synthetic_seq2seq/sort", data_dir=str(tmp_path_factory.mktemp("d")),
                   synthetic_train_examples=30, synthetic_eval_examples=5,
                   synthetic_min_length=2, synthetic_max_length=7,
                   max_source_length=LENGTH, max_target_length=LENGTH)
  batch = next(train_iterator(cfg, build_tokenizer(cfg), batch_size=2, seed=0))
  assert batch["targets_segment_ids"].max() >= 3  # really packed
  return batch


def unpack(batch, row, segment, key):
  """One example of a packed row, alone in a row of the same length."""
  ids = batch[key][row][batch[key + "_segment_ids"][row] == segment]
  out = np.zeros((1, LENGTH), np.int32)
  out[0, :len(ids)] = ids
  return out, len(ids)


@pytest.mark.parametrize("decoder_only,kind", [(False, "dot_product"), (True, "dot_product"),
                                               (False, "additive")])
def test_packed_logits_equal_one_by_one(packed_batch, decoder_only, kind):
  model_cfg = TransformerConfig.tiny(vocab_size=32, max_len=LENGTH, num_decoder_layers=1,
                                     num_encoder_layers=0 if decoder_only else 1,
                                     attention_kind=kind)
  model = Transformer(model_cfg)
  b = packed_batch
  inputs = None if decoder_only else b["inputs"]
  params = jax.jit(model.init)(jax.random.PRNGKey(0), inputs, b["targets"])["params"]
  kwargs = {} if decoder_only else dict(inputs_segment_ids=b["inputs_segment_ids"],
                                        inputs_positions=b["inputs_positions"])
  packed = jax.jit(model.apply, static_argnames="deterministic")(
      {"params": params}, inputs, b["targets"],
                       targets_segment_ids=b["targets_segment_ids"],
                       targets_positions=b["targets_positions"], deterministic=True, **kwargs)
  # Each example alone in its own padded row (rows of a batch never interact).
  places, sources, targets = [], [], []
  for row in range(b["targets"].shape[0]):
    for segment in range(1, b["targets_segment_ids"][row].max() + 1):
      places.append((row, segment))
      targets.append(unpack(b, row, segment, "targets"))
      sources.append(unpack(b, row, segment, "inputs"))
  alone = jax.jit(model.apply, static_argnames="deterministic")(
      {"params": params},
                      None if decoder_only else np.concatenate([s for s, _ in sources]),
                      np.concatenate([t for t, _ in targets]), deterministic=True)
  for k, (row, segment) in enumerate(places):
    where = b["targets_segment_ids"][row] == segment
    np.testing.assert_allclose(np.asarray(packed[row][where]),
                               np.asarray(alone[k, :targets[k][1]]), rtol=1e-5, atol=1e-5)
  assert len(places) >= 4
