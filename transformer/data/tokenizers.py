"""Tokenizers with one id layout: pad 0, BOS 1, EOS 2, unknown 3 (as `TransformerConfig`).

- `SentencePieceTokenizer`: subwords (unigram or BPE); trained by `vocabularies.py`.
- `ByteTokenizer`: UTF-8 bytes shifted by 3; exact for any text (language modelling).
- `CharTokenizer`: the training corpus's characters; unseen characters become unknown.
- `IdentityTokenizer`: synthetic tasks, whose text is already space-separated ids.

`encode` never adds BOS or EOS: the pipeline appends EOS and the model inserts BOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import sentencepiece as spm

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_SPECIALS = (PAD_ID, BOS_ID, EOS_ID)


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


def _strip(ids: Sequence[int]) -> list[int]:
  """Ids up to the first EOS, without pad/BOS: what decoding a model output needs."""
  out = []
  for i in np.asarray(ids, dtype=np.int64).tolist():
    if i == EOS_ID:
      break
    if i not in _SPECIALS:
      out.append(i)
  return out


class _Ids:
  pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID


class SentencePieceTokenizer(_Ids):
  """A trained SentencePiece model, held as bytes so that it pickles to worker processes."""

  def __init__(self, model_proto: bytes):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    got = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id())
    if got != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
      raise ValueError(f"SentencePiece model has pad/bos/eos/unk ids {got}; expected 0/1/2/3")
    self.vocab_size = self._sp.get_piece_size()

  def __getstate__(self):
    return {"model_proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"])

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode(_strip(ids))


class ByteTokenizer(_Ids):
  """UTF-8 bytes as ids 3..258 (id 3 doubles as byte 0: text rarely holds NUL)."""
  vocab_size = 259
  _OFFSET = 3

  def encode(self, text: str) -> list[int]:
    return (np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
            + self._OFFSET).tolist()

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(i - self._OFFSET for i in _strip(ids) if i < self.vocab_size)
    return data.decode("utf-8", errors="replace")  # model output may cut a character


class CharTokenizer(_Ids):
  """One id per character of the training corpus (ids 4..), in sorted order."""

  def __init__(self, chars: str):
    self.chars = "".join(sorted(set(chars)))
    self._ids = {c: i + 4 for i, c in enumerate(self.chars)}
    self.vocab_size = len(self.chars) + 4

  def encode(self, text: str) -> list[int]:
    return [self._ids.get(c, UNK_ID) for c in text]

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.chars[i - 4] if 4 <= i < self.vocab_size else "\ufffd"
                   for i in _strip(ids))


class IdentityTokenizer(_Ids):
  """Text '5 7 9' <-> ids [5, 7, 9] for tasks stored as ids (synthetic_seq2seq)."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  def encode(self, text: str) -> list[int]:
    try:
      ids = [int(t) for t in text.split()]
    except ValueError:
      raise ValueError(f"identity tokenizer needs space-separated ids, got {text[:60]!r}") from None
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f"identity tokenizer: id {bad[0]} outside vocab_size={self.vocab_size}")
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return " ".join(map(str, _strip(ids)))
