"""BLEU and chrF through sacreBLEU, whole-split translation, perplexity, and sampling.

Scores are sacreBLEU's, computed on detokenized hypotheses (the tokenizer's `decode`)
against the dataset's raw reference text (`data.raw_examples`), never against references
rebuilt from token ids, and reported with sacreBLEU's signature. (The paper's §6.1 BLEU is
tokenized BLEU; sacreBLEU's detokenized 13a BLEU is the comparable modern figure.)

Every function takes the `transformer.run.Run` (training's or a loaded one) and params in
any layout (training's are replicated over devices); a split's raw text is cached on the
run, and compiled decoders are cached per model config for the whole process. Translation
is batched (sorted by length) and returns one output per input, in input order; output
length is capped at the source length + 50 (§6.1) and at model.max_len.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from sacrebleu.metrics import BLEU, CHRF

from transformer import data, decoding, losses, step
from transformer.config import TransformerConfig
from transformer.model import Transformer
from transformer.run import Run
from transformer.vit import VisionConfig, VisionTransformer

EXTRA_OUTPUT_TOKENS = 50  # §6.1: maximum output length = input length + 50


class InputTooLong(ValueError):
  """A source line the model cannot take; names the line, its length and the limit."""


@functools.lru_cache(maxsize=16)
def _param_shapes(model_cfg: TransformerConfig, vision: VisionConfig | None = None
                  ) -> list[tuple[int, ...]]:
  if vision is not None:
    image = jnp.zeros((1, *vision.image_shape), jnp.float32)
    abstract = jax.eval_shape(VisionTransformer(model_cfg, vision).init, jax.random.key(0),
                              image)["params"]
  else:
    ids = jnp.ones((1, 8), jnp.int32)
    abstract = jax.eval_shape(Transformer(model_cfg).init, jax.random.key(0),
                              None if model_cfg.decoder_only else ids, ids)["params"]
  return [x.shape for x in jax.tree.leaves(abstract)]


def device_params(model: Transformer | VisionTransformer, params: Any) -> Any:
  """One copy of params from any layout: host, one device, replicated over a mesh, or
  pmap-stacked (a leading device axis, what train.py's state holds under pmap). The layout
  is told by comparing shapes with the model's, as shardings differ before and after a step."""
  expected = _param_shapes(model.config, getattr(model, "vision", None))
  leaves, treedef = jax.tree.flatten(params)
  if len(leaves) != len(expected):
    raise ValueError(f"params have {len(leaves)} arrays; the model has {len(expected)}")
  out = []
  for x, want in zip(leaves, expected):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
      x = x.addressable_shards[0].data  # a local copy (stacked: this device's row)
    if tuple(x.shape) != want:
      if tuple(x.shape[1:]) != want:
        raise ValueError(f"a params array has shape {tuple(x.shape)}; the model's is {want}")
      x = x[0]
    out.append(x)
  return jax.tree.unflatten(treedef, out)


# Scores.

def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], *,
                  target_lang: str | None = None) -> dict[str, Any]:
  """sacreBLEU corpus BLEU and chrF of detokenized text, with their signatures."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
  bleu, chrf = BLEU(trg_lang=target_lang or ""), CHRF()
  refs = [list(references)]
  b, c = bleu.corpus_score(list(hypotheses), refs), chrf.corpus_score(list(hypotheses), refs)
  return {"bleu": b.score, "chrf": c.score, "bleu_signature": str(bleu.get_signature()),
          "chrf_signature": str(chrf.get_signature()), "bleu_text": str(b),
          "lines": len(hypotheses)}


def _target_lang(cfg: data.DataConfig) -> str | None:
  return None if cfg.builder_name == "synthetic_seq2seq" else cfg.target_lang


# Translation.

def encode_sources(run: Run, texts: Sequence[str], *, truncate: bool = False
                   ) -> list[np.ndarray]:
  """Ids + EOS of each line; an over-long line raises InputTooLong (or, with truncate,
  keeps its first max_len - 1 tokens and EOS, counted in a warning)."""
  tokenizer, limit = run.tokenizer, run.model.config.max_len  # positions the model covers
  out, cut = [], 0
  for number, text in enumerate(texts, start=1):
    ids = np.asarray(list(tokenizer.encode(text)) + [tokenizer.eos_id], np.int32)
    if len(ids) > limit:
      if not truncate:
        raise InputTooLong(f"line {number} is {len(ids)} tokens long (with EOS); the model "
                           f"takes at most {limit} (model.max_len)")
      ids, cut = np.append(ids[:limit - 1], tokenizer.eos_id).astype(np.int32), cut + 1
    out.append(ids)
  if cut:
    logging.warning("truncated %d of %d source lines to max_len=%d tokens", cut, len(texts),
                    limit)
  return out


@functools.lru_cache(maxsize=64)
def _decoder(model_cfg: TransformerConfig, max_length: int, beam_size: int, alpha: float):
  """A jitted decoder shared by every caller with this model config: params are an argument,
  so periodic evaluation and the tools compile each input shape once per process."""
  model = Transformer(model_cfg)
  if beam_size == 1:
    return jax.jit(functools.partial(decoding.greedy_decode, model, max_length=max_length))
  return jax.jit(lambda p, x: decoding.beam_decode(
      model, p, x, beam_size=beam_size, alpha=alpha, max_length=max_length)[0][:, 0])


def translate_ids(run: Run, params: Any, sources: Sequence[np.ndarray], *, beam_size: int = 1,
                  alpha: float = 0.6, batch_size: int = 32) -> list[np.ndarray]:
  """Output ids (up to, without, EOS) for each source (ids + EOS), in input order.

  Sources are sorted by length so that batches waste little padding; a batch is
  [batch_size, width] with width rounded up to a multiple of 8 (few compilations), and
  the last batch is filled with copies of its first row, whose outputs are dropped.
  Greedy outputs are cut at each row's own source length + 50, which equals decoding the
  row alone (greedy rows are independent); beam search keeps the batch's limit, width + 50
  (cutting a beam hypothesis would truncate a sentence the search ranked as finished).
  """
  if beam_size < 1 or batch_size < 1:
    raise ValueError(f"beam_size={beam_size} and batch_size={batch_size} must be >= 1")
  params = device_params(run.model, params)
  cfg = run.model.config
  limit = cfg.max_len
  batch_size = min(batch_size, max(len(sources), 1))
  order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
  results: list[np.ndarray | None] = [None] * len(sources)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    longest = max(len(sources[i]) for i in rows)
    width = min(8 * math.ceil(longest / 8), max(limit, longest))
    max_length = min(width + EXTRA_OUTPUT_TOKENS, cfg.max_len)
    inputs = np.zeros((batch_size, width), np.int32)
    for r, i in enumerate(rows + [rows[0]] * (batch_size - len(rows))):
      inputs[r, :len(sources[i])] = sources[i]
    out = np.asarray(_decoder(cfg, max_length, beam_size, float(alpha))(
        params, jnp.asarray(inputs)))
    for r, i in enumerate(rows):
      seq = out[r][:len(sources[i]) + EXTRA_OUTPUT_TOKENS] if beam_size == 1 else out[r]
      ends = np.flatnonzero(seq == cfg.eos_id)
      results[i] = seq[:ends[0]] if len(ends) else seq
  missing = [i for i, r in enumerate(results) if r is None]
  assert not missing, f"sources {missing[:5]} got no translation"
  return results  # type: ignore[return-value]


def translate_texts(run: Run, params: Any, texts: Sequence[str], *, beam_size: int = 1,
                    alpha: float = 0.6, batch_size: int = 32, truncate: bool = False
                    ) -> list[str]:
  """Detokenized translations of text lines, one per line, in order."""
  tokenizer = run.tokenizer
  sources = encode_sources(run, texts, truncate=truncate)
  outputs = translate_ids(run, params, sources, beam_size=beam_size, alpha=alpha,
                          batch_size=batch_size)
  hypotheses = [tokenizer.decode(ids.tolist()) for ids in outputs]
  assert len(hypotheses) == len(texts), (len(hypotheses), len(texts))
  return hypotheses


def split_examples(run: Run, split: str, limit: int = 0) -> list[tuple[str, str]]:
  """The split's raw (source, reference) texts, the first `limit` of them if limit > 0."""
  key = ("raw", split)
  if key not in run.cache:
    run.cache[key] = data.raw_examples(run.data, split)
  return run.cache[key][:limit] if limit > 0 else run.cache[key]


def score_pairs(run: Run, params: Any, pairs: Sequence[tuple[str, str]], *, beam_size: int = 1,
                alpha: float = 0.6, batch_size: int = 32) -> tuple[dict[str, Any], list[str]]:
  """(BLEU/chrF scores, hypotheses) of translating each source against its reference."""
  hypotheses = translate_texts(run, params, [s for s, _ in pairs], beam_size=beam_size,
                               alpha=alpha, batch_size=batch_size, truncate=True)
  references = [t for _, t in pairs]
  assert len(hypotheses) == len(references), (len(hypotheses), len(references))
  scores = corpus_scores(hypotheses, references, target_lang=_target_lang(run.data))
  return scores, hypotheses


def bleu_on_split(run: Run, params: Any, split: str, *, limit: int = 0, beam_size: int = 1,
                  alpha: float = 0.6, batch_size: int = 64) -> dict[str, float]:
  """{'bleu', 'chrf', 'bleu_lines'} on the first `limit` examples of a split (0: all).

  For periodic evaluation in training: the subset is fixed, its raw text is cached on
  the run, the decoders compile once per process (one per batch width), and greedy
  decoding (beam_size=1) keeps it cheap. Every process decodes the whole subset, so all
  of them return the same numbers.
  """
  scores, _ = score_pairs(run, params, split_examples(run, split, limit),
                          beam_size=beam_size, alpha=alpha, batch_size=batch_size)
  cache = run.cache
  if not cache.get("logged_signature"):
    logging.info("BLEU on %s: %s; chrF: %s", split, scores["bleu_signature"],
                 scores["chrf_signature"])
    cache["logged_signature"] = True
  return {"bleu": scores["bleu"], "chrf": scores["chrf"], "bleu_lines": float(scores["lines"])}


# Perplexity.

@functools.lru_cache(maxsize=16)
def _loss_sums(model_cfg: TransformerConfig, label_smoothing: float):
  return jax.jit(functools.partial(step.loss_sums, Transformer(model_cfg),
                                   label_smoothing=label_smoothing))


def perplexity(run: Run, params: Any, pairs: Sequence[tuple[str, str]], *,
               batch_size: int = 64) -> dict[str, float]:
  """Teacher-forced loss, nll, perplexity (exp of the unsmoothed per-token nll), accuracy
  and token count of (source, reference) pairs; over-long pairs are truncated to max_len."""
  params = device_params(run.model, params)
  sources = encode_sources(run, [s for s, _ in pairs], truncate=True)
  targets = encode_sources(run, [t for _, t in pairs], truncate=True)
  fn = _loss_sums(run.model.config, float(run.settings.label_smoothing))
  order = sorted(range(len(pairs)), key=lambda i: -len(targets[i]))
  total: dict[str, float] = {}
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    width = {k: 8 * math.ceil(max(len(x[i]) for i in rows) / 8)
             for k, x in (("inputs", sources), ("targets", targets))}
    arrays = {k: np.zeros((batch_size, w), np.int32) for k, w in width.items()}
    # The last batch is filled with copies of its first row (an all-padding source is not a
    # sentence the model can attend over), weighted 0.
    for r, i in enumerate(rows + [rows[0]] * (batch_size - len(rows))):
      arrays["inputs"][r, :len(sources[i])] = sources[i]
      arrays["targets"][r, :len(targets[i])] = targets[i]
    arrays["valid"] = np.arange(batch_size) < len(rows)
    sums = fn(params, arrays)
    for k, v in sums.items():
      total[k] = total.get(k, 0.0) + float(v)
  assert total.get("sequence_count", 0) == len(pairs), (total.get("sequence_count"), len(pairs))
  return losses.summarize(total)


def split_metrics(run: Run, params: Any, split: str, *, batch_size: int = 64,
                  limit: int = 0) -> dict[str, float]:
  """Teacher-forced metrics of a whole split (the first `limit` batches if > 0) through the
  one loss, `step.loss_sums`: a language model's nll per token (and bits per character,
  `Run.text_unit`), an image classifier's top-1 accuracy (one target per image)."""
  params = device_params(run.model, params)
  fn = jax.jit(functools.partial(step.loss_sums, run.model,
                                 label_smoothing=float(run.settings.label_smoothing)))
  total: dict[str, float] = {}
  for batch in data.eval_batches(run.data, run.tokenizer, split,
                                 batch_size=batch_size)[:limit or None]:
    for k, v in fn(params, batch).items():
      total[k] = total.get(k, 0.0) + float(v)
  return losses.summarize(total, run.text_unit)


# Sampling (language models).

@functools.lru_cache(maxsize=16)
def _sampler(model_cfg: TransformerConfig, window: int, temperature: float, top_k: int):
  model = Transformer(model_cfg)
  return jax.jit(lambda p, prompt_1P, key: decoding.sample_decode(
      model, p, key, batch_size=1, max_length=window, prompt_BP=prompt_1P,
      temperature=temperature, top_k=top_k)[0])


def sample_ids(run: Run, params: Any, prompt: Sequence[int], *, length: int,
               temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> list[int]:
  """`length` tokens continuing `prompt`, sampled through the cached decoder.

  The model saw windows of data.max_target_length tokens in training, so it samples in
  windows of that length: each window starts from (BOS and) the last half-window of text,
  forced, and samples the rest; one compiled decoder serves every window. A sampled
  special id (a document end; padding, BOS or unknown, which training never rewards) ends
  a window early; the next continues the text. The same seed gives the
  same tokens (window i draws from fold_in(key(seed), i)).
  """
  cfg = run.model.config
  window = run.data.max_target_length
  keep = window // 2
  sampler = _sampler(cfg, window, float(temperature), min(int(top_k), cfg.output_vocab_size))
  params = device_params(run.model, params)
  specials = [cfg.pad_id, cfg.bos_id, cfg.eos_id, run.tokenizer.unk_id]
  key = jax.random.key(seed)
  text, index, empty = list(prompt), 0, 0
  while len(text) - len(prompt) < length:
    context = text[-keep:] if keep else []
    prompt_1P = np.zeros((1, keep), np.int32)
    prompt_1P[0, :len(context)] = context
    out = np.asarray(sampler(params, jnp.asarray(prompt_1P), jax.random.fold_in(key, index)))
    new = out[len(context):]
    ends = np.flatnonzero(np.isin(new, specials))
    new = new[:ends[0]] if len(ends) else new
    text, index = text + new.tolist(), index + 1
    empty = 0 if len(new) else empty + 1
    if empty == 100:
      raise ValueError("the model sampled a special id first in 100 windows in a row")
  return text[len(prompt):len(prompt) + length]
