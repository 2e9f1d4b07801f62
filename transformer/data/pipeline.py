"""Grain pipelines: packed, shuffled, sharded training batches and padded evaluation batches.

Batch keys (numpy int32 [batch, length]): inputs, targets, inputs_segment_ids,
targets_segment_ids, inputs_positions, targets_positions (Grain's packing names, which are
also the model's argument names: `transformer.model.model_inputs`); language models have
only the targets* keys. `inputs` = source ids + EOS, `targets` = target ids + EOS: the model
inserts BOS itself when it shifts the targets right (per segment, so packing is safe).

Length policy: a training example over max_source_length / max_target_length is dropped
and counted (logged as the count grows); evaluation examples are never dropped: rows are
as long as the split's longest example, or, with max_eval_length set, longer examples
are truncated (keeping a final EOS) and counted in a warning. Language-model documents
are cut into windows of max_target_length tokens in training and evaluation alike.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from transformer.data import images, sources
from transformer.data.config import DataConfig
from transformer.data.tokenizers import EOS_ID, Tokenizer

def _encode(cfg: DataConfig, tokenizer: Tokenizer, example: dict[str, Any]) -> dict:
  source, target = sources.example_texts(cfg, example)
  out = {"targets": np.asarray(tokenizer.encode(target) + [EOS_ID], np.int32)}
  if not cfg.decoder_only:
    out["inputs"] = np.asarray(tokenizer.encode(source) + [EOS_ID], np.int32)
  return out


def _windows(ids: np.ndarray, length: int) -> list[np.ndarray]:
  return [ids[i:i + length] for i in range(0, len(ids), length)]


def _window_offset(length: int, example: dict[str, np.ndarray], rng: np.random.Generator
                   ) -> dict[str, np.ndarray]:
  """Where this epoch's training windows of the document start: uniform in [0, length), so
  each epoch cuts new windows (nanoGPT's random windows; fixed ones are memorised)."""
  return {**example, "offset": rng.integers(min(length, len(example["targets"])))}


class _LmWindows(grain.experimental.FlatMapTransform):
  """One tokenized document -> consecutive windows of at most `length` tokens cut at its
  "offset": the tokens before it are a short window of their own (packing fills its row)."""
  max_fan_out = 1 << 20  # unused by the iterator flat-map; documents may be long

  def __init__(self, length: int):
    self.length = length

  def flat_map(self, example):
    ids, offset = example["targets"], example["offset"]
    head = [ids[:offset]] if offset else []
    return [{"targets": w} for w in head + _windows(ids[offset:], self.length)]


class _LengthFilter(grain.transforms.Filter):
  """Drops training examples over the limits, logging the count each time it doubles.

  Raises instead of spinning forever when a whole epoch in a row is over the limit.
  """

  def __init__(self, limits: dict[str, int], epoch_size: int):
    self.limits, self.epoch_size = limits, epoch_size
    self.dropped = self.seen = self.dropped_in_a_row = 0
    self._next_report = 1

  def filter(self, element) -> bool:
    self.seen += 1
    keep = all(len(element[k]) <= n for k, n in self.limits.items())
    if keep:
      self.dropped_in_a_row = 0
      return True
    self.dropped += 1
    self.dropped_in_a_row += 1
    if self.dropped >= self._next_report:
      logging.info("dropped %d of %d training examples longer than %s", self.dropped,
                   self.seen, self.limits)
      self._next_report *= 2
    if self.dropped_in_a_row > self.epoch_size:
      raise ValueError(f"every training example exceeds the length limits {self.limits}")
    return False


def _pad_row(example: dict[str, np.ndarray], lengths: dict[str, int]) -> dict[str, np.ndarray]:
  """One unpacked example padded to fixed lengths, with its segment ids and positions."""
  out = {}
  for key, length in lengths.items():
    ids = example[key]
    row = np.zeros(length, np.int32)
    row[:len(ids)] = ids
    out[key] = row
    out[key + "_segment_ids"] = (np.arange(length) < len(ids)).astype(np.int32)
    out[key + "_positions"] = np.where(np.arange(length) < len(ids), np.arange(length),
                                      0).astype(np.int32)
  return out


def _check_process(batch_size: int, process_index: int, process_count: int) -> None:
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be positive")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} outside [0, {process_count})")


def _lengths(cfg: DataConfig) -> dict[str, int]:
  lengths = {"targets": cfg.max_target_length}
  if not cfg.decoder_only:
    lengths["inputs"] = cfg.max_source_length
  return lengths


def train_iterator(cfg: DataConfig, tokenizer: Tokenizer | None, *, batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Endless training batches for this process; `get_state`/`set_state` resume exactly.

  Each process reads the examples `process_index::process_count` (disjoint shards) and
  reshuffles them every epoch from `seed`; batch_size is the per-process row count.
  """
  _check_process(batch_size, process_index, process_count)
  if cfg.images:  # no tokenizer: images and labels (`transformer.data.images`)
    return images.train_iterator(cfg, batch_size=batch_size, seed=seed,
                                 process_index=process_index, process_count=process_count)
  source = sources.data_source(cfg, cfg.train_split)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"{cfg.dataset}/{cfg.train_split}: no examples for process "
                     f"{process_index} of {process_count} ({len(source)} in all)")
  epoch_size = len(ds)
  if cfg.shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(None)  # reseeds the shuffle each epoch
  # A small read-ahead: Grain's default (16 threads, 500 elements) scans its whole buffer
  # per element and ran 2.4x slower on a 2-core machine (experiments/benchmark_input.py).
  ds = ds.map(functools.partial(_encode, cfg, tokenizer))
  if cfg.decoder_only:  # seeded by the element's index: new offsets each epoch, same on resume
    ds = ds.random_map(functools.partial(_window_offset, cfg.max_target_length), seed=seed)
  ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_buffer))
  lengths = _lengths(cfg)
  if cfg.decoder_only:
    ds = grain.experimental.FlatMapIterDataset(ds, _LmWindows(cfg.max_target_length))
  else:
    ds = ds.filter(_LengthFilter(lengths, epoch_size))
  if cfg.pack:
    ds = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct=lengths, num_packing_bins=batch_size, seed=seed, shuffle_bins=True)
  else:
    ds = ds.map(functools.partial(_pad_row, lengths=lengths))
  ds = ds.batch(batch_size, drop_remainder=True)
  return iter(ds)


def _eval_rows(cfg: DataConfig, tokenizer: Tokenizer, split: str
               ) -> tuple[list[tuple[int, dict[str, np.ndarray]]], dict[str, int]]:
  """(example index, ids) for every row of the split, and the row lengths to pad to."""
  encoded = grain.MapDataset.source(sources.data_source(cfg, split)).map(
      functools.partial(_encode, cfg, tokenizer))
  rows = []
  for index, example in enumerate(encoded):
    if cfg.decoder_only:
      rows += [(index, {"targets": w}) for w in _windows(example["targets"],
                                                         cfg.max_target_length)]
    else:
      rows.append((index, example))
  if not rows:
    raise ValueError(f"{cfg.dataset}: split {split!r} has no examples")
  if cfg.decoder_only:
    return rows, {"targets": cfg.max_target_length}
  longest = {k: max(len(r[k]) for _, r in rows) for k in ("inputs", "targets")}
  if cfg.max_eval_length is None:  # whole examples; multiples of 8 limit recompilations
    return rows, {k: 8 * math.ceil(n / 8) for k, n in longest.items()}
  limit = cfg.max_eval_length
  truncated = 0
  for _, row in rows:
    over = [k for k in row if len(row[k]) > limit]
    truncated += bool(over)
    for k in over:
      row[k] = np.concatenate([row[k][:limit - 1], [EOS_ID]]).astype(np.int32)
  if truncated:
    logging.warning("%s/%s: truncated %d of %d examples to max_eval_length=%d", cfg.dataset,
                    split, truncated, len(rows), limit)
  return rows, {k: min(n, limit) for k, n in longest.items()}


def eval_batches(cfg: DataConfig, tokenizer: Tokenizer | None, split: str, *, batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """Padded batches covering each of this process's rows exactly once.

  Every process gets the same number of batches of the same shapes; rows that pad the
  last batches have `valid` False and `index` -1. `index` is the example's position in
  `raw_examples(cfg, split)` (for language models, its document), for gathering outputs.
  """
  _check_process(batch_size, process_index, process_count)
  if cfg.images:
    return images.eval_batches(cfg, split, batch_size=batch_size, process_index=process_index,
                               process_count=process_count)
  rows, lengths = _eval_rows(cfg, tokenizer, split)
  mine = rows[process_index::process_count]
  num_batches = math.ceil(math.ceil(len(rows) / process_count) / batch_size)
  empty = {k: np.zeros(0, np.int32) for k in lengths}
  batches = []
  for b in range(num_batches):
    chunk = mine[b * batch_size:(b + 1) * batch_size]
    padded = [_pad_row(r, lengths) for _, r in chunk]
    padded += [_pad_row(empty, lengths)] * (batch_size - len(chunk))
    batch = {k: np.stack([p[k] for p in padded]) for k in padded[0]}
    batch["valid"] = np.arange(batch_size) < len(chunk)
    batch["index"] = np.array([i for i, _ in chunk] + [-1] * (batch_size - len(chunk)),
                              np.int32)
    batches.append(batch)
  return batches


def count_tokens(batch: dict[str, np.ndarray], keys: Sequence[str] = ("inputs", "targets")
                 ) -> int:
  """Non-padding tokens in a batch (for throughput figures)."""
  return int(sum(np.count_nonzero(batch[k + "_segment_ids"]) for k in keys if k in batch))
