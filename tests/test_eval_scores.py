"""BLEU / chrF: equal to sacreBLEU called directly, computed on detokenized hypotheses
against the raw reference text (no model is compiled here)."""

import types

import numpy as np
import pytest
import sacrebleu

from transformer import data, evaluation
from transformer.data import DataConfig
from transformer.data.tokenizers import SentencePieceTokenizer
from transformer.data.vocabularies import train_sentencepiece

HYPOTHESES = ["Ein Mann fährt mit dem Fahrrad die Straße entlang.",
              "Zwei Hunde spielen im Schnee.",
              "Eine Frau liest draußen ein Buch."]
REFERENCES = ["Ein Mann fährt auf einem Fahrrad die Straße entlang.",
              "Zwei Hunde spielen im tiefen Schnee.",
              "Eine Frau liest ein Buch im Freien."]


def test_bleu_and_chrf_equal_sacrebleu_called_directly():
  scores = evaluation.corpus_scores(HYPOTHESES, REFERENCES, target_lang="de")
  direct_bleu = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES])
  direct_chrf = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES])
  assert scores["bleu"] == direct_bleu.score
  assert scores["chrf"] == direct_chrf.score
  assert scores["bleu_text"] == str(direct_bleu)
  assert scores["lines"] == 3
  # Golden values pin the sacreBLEU defaults (13a tokenization, exp smoothing, chrF2).
  # 13a splits off the final "."; 23 hypothesis and 25 reference tokens, so BP = e^(1-25/23).
  assert round(scores["bleu"], 2) == 43.32 and round(scores["chrf"], 2) == 72.41
  assert ("87.0/65.0/41.2/21.4 (BP = 0.917 ratio = 0.920 hyp_len = 23 ref_len = 25)"
          in scores["bleu_text"])
  assert scores["bleu_signature"] == (
      f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}")
  assert scores["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no")
  # A perfect hypothesis set scores 100 in both.
  perfect = evaluation.corpus_scores(REFERENCES, REFERENCES)
  assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)


def test_counts_must_agree():
  with pytest.raises(ValueError, match="2 hypotheses for 3 references"):
    evaluation.corpus_scores(HYPOTHESES[:2], REFERENCES)


def test_scores_are_on_detokenized_hypotheses_and_raw_references(monkeypatch):
  """An oracle model that outputs the reference's ids scores exactly 100: the scored
  hypotheses are the tokenizer's detokenized text, identical to the raw references,
  not subword pieces (which would score far lower)."""
  cfg = DataConfig(dataset="wmt14_translate/de-en", vocab_size=45, spm_byte_fallback=False)
  tokenizer = SentencePieceTokenizer(train_sentencepiece(cfg, iter(REFERENCES * 20)))
  bits = types.SimpleNamespace(
      model=types.SimpleNamespace(config=types.SimpleNamespace(max_len=128)),
      tokenizer=tokenizer, data=cfg, settings=types.SimpleNamespace(label_smoothing=0.1),
      cache={})
  sources = ["a man rides a bike", "two dogs play", "a woman reads"]
  oracle = {tuple(tokenizer.encode(s) + [2]): r for s, r in zip(sources, REFERENCES)}

  def translate_ids(bits, params, source_ids, **kwargs):
    return [np.asarray(tokenizer.encode(oracle[tuple(ids.tolist())]) + [2]) for ids in source_ids]

  monkeypatch.setattr(evaluation, "translate_ids", translate_ids)
  scores, hypotheses = evaluation.score_pairs(bits, None, list(zip(sources, REFERENCES)))
  assert hypotheses == REFERENCES  # detokenized: spaces and punctuation as in the raw text
  assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
  pieces = [" ".join(tokenizer._sp.encode(r, out_type=str)) for r in REFERENCES]
  assert sacrebleu.corpus_bleu(pieces, [REFERENCES]).score < 10.0


def test_split_references_are_the_raw_text_not_rebuilt_from_ids(tmp_path, monkeypatch):
  """A parallel_text split whose reference holds a character the vocabulary lacks: ids
  cannot rebuild it, so an oracle that outputs the reference's ids scores below 100
  against the raw text (which sacreBLEU must see), but 100 against rebuilt references."""
  train_en = ["a man rides", "two dogs play", "a woman reads", "children run"] * 10
  train_de = ["Ein Mann fährt.", "Zwei Hunde spielen.", "Eine Frau liest.", "Kinder laufen."] * 10
  test_en = ["a man rides", "two dogs play"]
  test_de = ["Ein Mann fährt.", "Zwei Hunde spielen ½."]
  for stem, en, de in (("train", train_en, train_de), ("val", test_en, test_de),
                       ("test", test_en, test_de)):
    (tmp_path / f"{stem}.en").write_text("\n".join(en) + "\n")
    (tmp_path / f"{stem}.de").write_text("\n".join(de) + "\n")
  cfg = DataConfig(dataset="parallel_text", path=str(tmp_path), data_dir=str(tmp_path / "tfds"),
                   vocab_size=40, spm_byte_fallback=False)
  tokenizer = data.build_tokenizer(cfg)
  bits = types.SimpleNamespace(
      model=types.SimpleNamespace(config=types.SimpleNamespace(max_len=128)),
      tokenizer=tokenizer, data=cfg, settings=types.SimpleNamespace(label_smoothing=0.1),
      cache={})
  assert evaluation.split_examples(bits, "test") == list(zip(test_en, test_de))
  oracle = {tuple(tokenizer.encode(s) + [2]): tokenizer.encode(t) for s, t in zip(test_en, test_de)}
  monkeypatch.setattr(evaluation, "translate_ids", lambda bits, params, source_ids, **kw: [
      np.asarray(oracle[tuple(ids.tolist())]) for ids in source_ids])
  rebuilt = [tokenizer.decode(tokenizer.encode(t)) for t in test_de]
  assert rebuilt[0] == test_de[0] and rebuilt[1] != test_de[1]  # '½' is not in the vocabulary
  got = evaluation.bleu_on_split(bits, None, "test")
  assert got["bleu_lines"] == 2.0
  assert got["bleu"] == sacrebleu.corpus_bleu(rebuilt, [test_de]).score < 99.0
  assert sacrebleu.corpus_bleu(rebuilt, [rebuilt]).score == pytest.approx(100.0)
