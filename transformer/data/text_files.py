"""Reading local, line-aligned text files (plain or gzipped) with errors that name the file
and line, for the parallel-text and language-modelling builders.

Lines are split on '\\n' only (a '\\r' before it is dropped): `str.splitlines` would also
split on characters such as U+2028 inside a sentence and break the line alignment.
"""

from __future__ import annotations

import gzip
import os


def resolve(stem: str, lang: str) -> str:
  """`{stem}.{lang}`, or `{stem}.{lang}.gz` when only that exists."""
  plain = f"{stem}.{lang}"
  if os.path.exists(plain) or not os.path.exists(plain + ".gz"):
    return plain
  return plain + ".gz"


def read_bytes(path: str) -> bytes:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  with open(path, "rb") as f:
    data = f.read()
  if path.endswith(".gz"):
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise ValueError(f"{path}: not a valid gzip file ({e})") from None
  if not data.strip():
    raise ValueError(f"{path}: file is empty")
  return data


def _decode(line: bytes, path: str, number: int) -> str:
  try:
    return line.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}:{number}: not valid UTF-8 (byte {line[e.start]:#04x} at column "
                     f"{e.start + 1})") from None


def read_lines(path: str) -> list[str]:
  """The file's lines without line endings; a final newline adds no empty line."""
  data = read_bytes(path)
  if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not text
    data = data[3:]
  raw = data.split(b"\n")
  if raw and raw[-1] == b"":
    raw.pop()
  return [_decode(line.removesuffix(b"\r"), path, i + 1) for i, line in enumerate(raw)]


def read_text(path: str) -> str:
  """The whole file as text, with the line of any undecodable byte in the error."""
  return "\n".join(read_lines(path)) + "\n"


def read_parallel(source_path: str, target_path: str) -> list[tuple[int, str, str]]:
  """(line number, source, target) for each line pair; line counts must agree."""
  source, target = read_lines(source_path), read_lines(target_path)
  if len(source) != len(target):
    raise ValueError(f"{source_path} has {len(source)} lines but {target_path} has "
                     f"{len(target)}; parallel files must be line-aligned")
  return [(i + 1, s, t) for i, (s, t) in enumerate(zip(source, target))]
