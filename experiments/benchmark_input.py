"""Input-pipeline throughput on local parallel text (Multi30k): examples/s and tokens/s.

  .venv/bin/python experiments/benchmark_input.py --path=../shared/data/multi30k \
      --batch_size=64 --steps=300

The first run prepares the dataset and trains the SentencePiece model (cached in
--data_dir); the figures cover only the steady-state iterator, as training sees it.
"""

import sys
import time

from absl import app, flags

from transformer.data import (DataConfig, build_tokenizer, count_tokens, eval_batches,
                              train_iterator)

FLAGS = flags.FLAGS
flags.DEFINE_string("path", "../shared/data/multi30k", "folder of {split}.{lang}[.gz] files")
flags.DEFINE_string("data_dir", "", "prepared data and vocabularies ('' = the default cache)")
flags.DEFINE_string("test_stem", "test_2016_flickr", "file stem of the test split")
flags.DEFINE_integer("batch_size", 64, "rows per batch")
flags.DEFINE_integer("steps", 300, "timed batches")
flags.DEFINE_integer("warmup", 5, "untimed batches first")
flags.DEFINE_integer("max_length", 128, "max source and target length (tokens, with EOS)")
flags.DEFINE_integer("vocab_size", 8000, "SentencePiece vocabulary size")
flags.DEFINE_enum("spm_model_type", "unigram", ["unigram", "bpe"], "SentencePiece model")
flags.DEFINE_bool("pack", True, "pack examples into rows")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:  # a missing --path or an unusable --data_dir: one line naming it
    _benchmark()
  except (ValueError, OSError) as e:
    sys.exit(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _benchmark():
  cfg = DataConfig(dataset="parallel_text", path=FLAGS.path, data_dir=FLAGS.data_dir,
                   source_lang="en", target_lang="de", vocab_size=FLAGS.vocab_size,
                   spm_model_type=FLAGS.spm_model_type,
                   split_files={"train": "train", "validation": "val", "test": FLAGS.test_stem},
                   max_source_length=FLAGS.max_length, max_target_length=FLAGS.max_length,
                   pack=FLAGS.pack)
  start = time.perf_counter()
  tokenizer = build_tokenizer(cfg)
  it = train_iterator(cfg, tokenizer, batch_size=FLAGS.batch_size, seed=0)
  for _ in range(FLAGS.warmup):
    next(it)
  print(f"setup (prepare + tokenizer + first {FLAGS.warmup} batches): "
        f"{time.perf_counter() - start:.1f} s; vocab {tokenizer.vocab_size}")

  examples = tokens = slots = 0
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    batch = next(it)
    examples += int(batch["targets_segment_ids"].max(axis=1).sum())
    tokens += count_tokens(batch)
    slots += batch["inputs"].size + batch["targets"].size
  seconds = time.perf_counter() - start
  print(f"train: {FLAGS.steps} batches of {FLAGS.batch_size}x{FLAGS.max_length} "
        f"(pack={FLAGS.pack}) in {seconds:.2f} s: {FLAGS.steps / seconds:.1f} batches/s, "
        f"{examples / seconds:,.0f} examples/s, {tokens / seconds:,.0f} tokens/s "
        f"(source+target), rows {tokens / slots:.0%} full")

  start = time.perf_counter()
  batches = eval_batches(cfg, tokenizer, "validation", batch_size=FLAGS.batch_size)
  seconds = time.perf_counter() - start
  rows = sum(int(b["valid"].sum()) for b in batches)
  print(f"eval: {rows} validation examples in {len(batches)} batches "
        f"({batches[0]['inputs'].shape[1]} source tokens/row) in {seconds:.2f} s: "
        f"{rows / seconds:,.0f} examples/s")


if __name__ == "__main__":
  app.run(main)
