"""Grain pipelines: packing, determinism, resume, sharding, length policy, eval coverage."""

import collections
import itertools
import json
import logging

import numpy as np
import pytest

from transformer.data import DataConfig, build_tokenizer, eval_batches, raw_examples, train_iterator

EOS = 2


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  return DataConfig(dataset="synthetic_seq2seq/reverse", data_dir=str(tmp_path_factory.mktemp("d")),
                    synthetic_train_examples=40, synthetic_eval_examples=11,
                    synthetic_min_length=2, synthetic_max_length=9,
                    max_source_length=24, max_target_length=24)


def encoded(cfg, split):
  tok = build_tokenizer(cfg)
  return [(tuple(tok.encode(s) + [EOS]), tuple(tok.encode(t) + [EOS]))
          for s, t in raw_examples(cfg, split)]


def segments(batch, key):
  """Every packed example of a batch, row by row, as a tuple of ids."""
  out = []
  for ids, seg, pos in zip(batch[key], batch[key + "_segment_ids"], batch[key + "_positions"]):
    for s in range(1, seg.max() + 1):
      where = np.flatnonzero(seg == s)
      assert np.array_equal(pos[where], np.arange(len(where)))  # positions restart at 0
      assert np.array_equal(where, np.arange(where[0], where[0] + len(where)))  # contiguous
      out.append(tuple(ids[where].tolist()))
    assert np.all(ids[seg == 0] == 0) and np.all(pos[seg == 0] == 0)
  return out


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_packed_batches_hold_whole_examples(cfg):
  it = train_iterator(cfg, build_tokenizer(cfg), batch_size=3, seed=0)
  batch = next(it)
  assert sorted(batch) == sorted(["inputs", "targets", "inputs_segment_ids",
                                  "targets_segment_ids", "inputs_positions", "targets_positions"])
  assert all(v.shape == (3, 24) and v.dtype == np.int32 for v in batch.values())
  pairs = list(zip(segments(batch, "inputs"), segments(batch, "targets")))
  assert len(pairs) > 3  # several examples per row
  known = set(encoded(cfg, "train"))
  assert all(pair in known for pair in pairs)  # paired correctly, EOS at the end, no BOS


def test_same_seed_same_batches_other_seed_other_batches(cfg):
  tok = build_tokenizer(cfg)
  first = take(train_iterator(cfg, tok, batch_size=2, seed=7), 5)
  assert_same(first, take(train_iterator(cfg, tok, batch_size=2, seed=7), 5))
  other = take(train_iterator(cfg, tok, batch_size=2, seed=8), 5)
  assert not np.array_equal(first[0]["targets"], other[0]["targets"])


@pytest.mark.parametrize("pack", [True, False])
def test_resume_from_saved_state_mid_epoch_and_across_epochs(cfg, pack):
  cfg = cfg.replace(pack=pack)
  tok = build_tokenizer(cfg)
  uninterrupted = take(train_iterator(cfg, tok, batch_size=2, seed=3), 40)  # > 1 epoch
  it = train_iterator(cfg, tok, batch_size=2, seed=3)
  take(it, 7)
  state = json.loads(json.dumps(it.get_state()))  # as a checkpoint would store it
  resumed = train_iterator(cfg, tok, batch_size=2, seed=3)
  resumed.set_state(state)
  assert_same(take(resumed, 33), uninterrupted[7:])


def test_unpacked_epochs_are_fresh_permutations(cfg):
  cfg = cfg.replace(pack=False)
  it = train_iterator(cfg, build_tokenizer(cfg), batch_size=1, seed=0)
  rows = [tuple(b["targets"][0][b["targets_segment_ids"][0] == 1].tolist()) for b in take(it, 80)]
  expected = collections.Counter(t for _, t in encoded(cfg, "train"))
  assert collections.Counter(rows[:40]) == expected == collections.Counter(rows[40:])
  assert rows[:40] != rows[40:]


def test_process_shards_are_disjoint_and_cover_the_data(cfg):
  cfg = cfg.replace(pack=False, shuffle=False)
  tok = build_tokenizer(cfg)
  seen = []
  for index in range(3):
    it = train_iterator(cfg, tok, batch_size=1, seed=0, process_index=index, process_count=3)
    size = len(range(index, 40, 3))
    seen.append([tuple(b["inputs"][0][b["inputs_segment_ids"][0] == 1].tolist())
                 for b in take(it, size)])
  all_inputs = [s for s, _ in encoded(cfg, "train")]
  # Unshuffled, process i reads examples i, i+3, ...: disjoint, and together all of them.
  assert seen == [all_inputs[i::3] for i in range(3)]


def test_long_training_examples_are_dropped_and_counted(cfg, caplog):
  cfg = cfg.replace(max_source_length=6, max_target_length=6, pack=False)
  tok = build_tokenizer(cfg)
  short = collections.Counter(t for s, t in encoded(cfg, "train") if len(s) <= 6)
  with caplog.at_level(logging.INFO):
    batches = take(train_iterator(cfg, tok, batch_size=1, seed=0), sum(short.values()))
  rows = collections.Counter(tuple(b["targets"][0][b["targets_segment_ids"][0] == 1].tolist())
                             for b in batches)
  assert rows == short  # one epoch of exactly the examples that fit
  assert "training examples longer than" in caplog.text


def test_all_examples_too_long_raises_instead_of_hanging(cfg):
  cfg = cfg.replace(max_source_length=2, max_target_length=2)
  it = train_iterator(cfg, build_tokenizer(cfg), batch_size=1, seed=0)
  with pytest.raises(ValueError, match="every training example exceeds the length limits"):
    next(it)


def test_eval_batches_cover_every_example_once_across_processes(cfg):
  tok = build_tokenizer(cfg)
  expected = encoded(cfg, "test")
  per_process = [eval_batches(cfg, tok, "test", batch_size=2, process_index=i, process_count=3)
                 for i in range(3)]
  assert len({len(b) for b in per_process}) == 1  # same number of steps on every process
  found = {}
  for batches in per_process:
    for batch in batches:
      assert batch["inputs"].shape == batch["targets"].shape == (2, 16)  # longest 10 -> 16
      for row in np.flatnonzero(batch["valid"]):
        index = int(batch["index"][row])
        assert index not in found
        found[index] = (tuple(batch["inputs"][row][batch["inputs_segment_ids"][row] == 1]),
                        tuple(batch["targets"][row][batch["targets_segment_ids"][row] == 1]))
      assert np.all(batch["index"][~batch["valid"]] == -1)
      assert np.all(batch["targets_segment_ids"][~batch["valid"]] == 0)
  assert found == dict(enumerate(expected))


def test_eval_keeps_examples_over_the_training_limit_whole(cfg):
  cfg = cfg.replace(max_source_length=4, max_target_length=4)
  batches = eval_batches(cfg, build_tokenizer(cfg), "test", batch_size=32)
  kept = [tuple(r[s == 1]) for r, s in zip(batches[0]["targets"], batches[0]["targets_segment_ids"])]
  assert kept[:11] == [t for _, t in encoded(cfg, "test")]


def test_eval_truncation_is_counted(cfg, caplog):
  cfg = cfg.replace(max_eval_length=5)
  expected = encoded(cfg, "test")
  with caplog.at_level(logging.WARNING):
    batch = eval_batches(cfg, build_tokenizer(cfg), "test", batch_size=16)[0]
  over = sum(len(s) > 5 or len(t) > 5 for s, t in expected)
  assert over > 0 and f"truncated {over} of 11 examples to max_eval_length=5" in caplog.text
  assert batch["inputs"].shape == (16, 5) and batch["valid"].sum() == 11
  for row, (source, _) in enumerate(expected):
    got = tuple(batch["inputs"][row][batch["inputs_segment_ids"][row] == 1].tolist())
    assert got == (source if len(source) <= 5 else source[:4] + (EOS,))


def test_language_model_batches(tmp_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("".join(f"line number {i}, some words\n" for i in range(30)))
  cfg = DataConfig(dataset="lm_text", path=str(corpus), data_dir=str(tmp_path / "d"),
                   lm_chunk_chars=100, max_target_length=16)
  tok = build_tokenizer(cfg)
  batch = next(train_iterator(cfg, tok, batch_size=2, seed=0))
  assert sorted(batch) == ["targets", "targets_positions", "targets_segment_ids"]
  assert batch["targets"].shape == (2, 16)
  docs = [t for _, t in raw_examples(cfg, "validation")]
  tokens = collections.defaultdict(list)
  for b in eval_batches(cfg, tok, "validation", batch_size=4):
    for row in np.flatnonzero(b["valid"]):
      tokens[int(b["index"][row])] += b["targets"][row][b["targets_segment_ids"][row] == 1].tolist()
  # Windows of a document, in order, rebuild it exactly: nothing dropped or truncated.
  assert [tok.decode(tokens[i]) for i in range(len(docs))] == docs
  assert all(tokens[i][-1] == EOS for i in range(len(docs)))


def test_language_model_training_windows_move_each_epoch_and_resume(tmp_path):
  """Each epoch cuts every document's windows at a new random offset (nanoGPT's random
  windows): every segment is a slice of one document, no text is lost, and a restored
  iterator gives the same batches."""
  corpus = tmp_path / "c.txt"
  corpus.write_text("".join(f"line number {i}, some words\n" for i in range(30)))
  cfg = DataConfig(dataset="lm_text", path=str(corpus), data_dir=str(tmp_path / "d"),
                   lm_chunk_chars=100, max_target_length=16, shuffle=False, pack=False)
  tok = build_tokenizer(cfg)
  docs = [tok.encode(t) + [EOS] for _, t in raw_examples(cfg, "train")]
  windows = sum(len(d) // 16 + 2 for d in docs)  # an upper bound on one epoch's windows
  it = train_iterator(cfg, tok, batch_size=1, seed=0)
  rows = [next(it)["targets"][0] for _ in range(3 * windows)]
  segments = [tuple(r[r != 0].tolist()) for r in rows]
  # Unshuffled and unpacked, documents come in order: rebuild each epoch document by document.
  epochs, doc, text, cuts = [], 0, [], []
  for seg in segments:
    cuts.append(len(text))
    text += seg
    if text == docs[doc % len(docs)]:
      epochs.append(cuts)
      doc, text, cuts = doc + 1, [], []
    assert docs[doc % len(docs)][:len(text)] == text  # a slice of the document, in order
  assert len(epochs) >= 2 * len(docs)  # whole documents rebuilt, epoch after epoch
  first_cuts = [c[1] if len(c) > 1 else 0 for c in epochs]
  assert len(set(first_cuts[:len(docs)])) > 1  # offsets differ between documents...
  assert first_cuts[:len(docs)] != first_cuts[len(docs):2 * len(docs)]  # ...and epochs
  assert all(0 < c <= 16 for c in first_cuts)
  it = train_iterator(cfg, tok, batch_size=2, seed=0)
  take(it, 7)
  state = it.get_state()
  expected = take(it, 30)
  restored = train_iterator(cfg, tok, batch_size=2, seed=0)
  restored.set_state(state)
  assert_same(take(restored, 30), expected)


def test_iterator_is_endless(cfg):
  it = train_iterator(cfg, build_tokenizer(cfg), batch_size=4, seed=0)
  assert len(list(itertools.islice(it, 25))) == 25
