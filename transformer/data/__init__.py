"""Input pipelines: TFDS datasets read as ArrayRecord (no TensorFlow), tokenizers, Grain.

    cfg = DataConfig.from_mapping(config.data)
    tokenizer = build_tokenizer(cfg)              # trains + caches SentencePiece if needed
    it = train_iterator(cfg, tokenizer, batch_size=B, seed=0,
                        process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)                              # dict of int32 [B, L]; it.get_state()
    for batch in eval_batches(cfg, tokenizer, cfg.eval_split, batch_size=B): ...
    references = raw_examples(cfg, cfg.test_split)    # [(source, target)], for BLEU

Public interface:
- `DataConfig` (config.py): dataset name, data_dir, languages, builder options,
  tokenizer, lengths, packing; `DataConfig.from_mapping(mapping)`.
- `build_tokenizer(cfg) -> Tokenizer` (vocabularies.py): `encode(str) -> list[int]`,
  `decode(ids) -> str`, `vocab_size`, `pad_id`=0, `bos_id`=1, `eos_id`=2.
- `train_iterator(cfg, tokenizer, *, batch_size, seed, process_index=0, process_count=1)`
  (pipeline.py) -> `grain.DatasetIterator` of packed (if `cfg.pack`) batches with keys
  inputs, targets, {inputs,targets}_segment_ids, {inputs,targets}_positions; endless,
  reshuffled each epoch; `get_state()` / `set_state()` resume exactly.
- `eval_batches(cfg, tokenizer, split, *, batch_size, process_index=0, process_count=1)`
  -> list of padded, unpacked batches with the same keys plus `valid` (bool [B]) and
  `index` (int32 [B], position in `raw_examples`, -1 for padding rows).
- `raw_examples(cfg, split) -> list[(source_text, target_text)]` (sources.py).
- `data_source(cfg, split)`: the prepared split as a random-access TFDS data source.
Language-model batches (dataset `lm_text`) carry only the `targets*` keys.

Modules: config (DataConfig), sources (TFDS access), synthetic / parallel_text / lm_text
(the project's TFDS builders), text_files (reading local files), tokenizers,
vocabularies (training and caching), locking (cross-process lock), pipeline (Grain).
"""

from transformer.data.config import DataConfig
from transformer.data.pipeline import count_tokens, eval_batches, train_iterator
from transformer.data.sources import data_source, raw_examples
from transformer.data.tokenizers import Tokenizer
from transformer.data.vocabularies import build_tokenizer

__all__ = ["DataConfig", "Tokenizer", "build_tokenizer", "count_tokens", "data_source",
           "eval_batches", "raw_examples", "train_iterator"]
