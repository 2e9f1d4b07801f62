"""Flag parsing for the entry points: one-line errors instead of tracebacks.

`config_flags` loads the `--config` file and applies `--config.KEY=VALUE` overrides while
absl parses the command line, so a missing file, a syntax error, a bad variant or a
misspelled key raises inside the parser, before `main`, with a long traceback (a missing
file even waits until JAX has started). `app.run(main, flags_parser=parse_flags)` turns
those into one line naming the flag.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

from absl import flags
from ml_collections.config_flags import config_flags


def _config_file_flags() -> list[str]:
  return [name for name, flag in flags.FLAGS._flags().items()  # noqa: SLF001  (no public API)
          if isinstance(flag.parser, config_flags.ConfigFileFlagParser)]


def _flag_values(argv: list[str], name: str) -> list[str]:
  """Every value given to --name (`--name=V` or `--name V`), in order."""
  values = []
  for i, arg in enumerate(argv[1:], start=1):
    if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
      values.append(argv[i + 1])
    elif arg.startswith((f"--{name}=", f"-{name}=")):
      values.append(arg.split("=", 1)[1])
  return values


def _check_config_file(name: str, value: str) -> None:
  """Exits with one line unless `value` (PATH[:VARIANT]) names a Python file that compiles."""
  path = value.split(":", 1)[0]
  if not path:
    sys.exit(f"error: --{name}={value!r}: give a config file, PATH or PATH:VARIANT")
  if not os.path.isfile(path):
    what = "is a directory" if os.path.isdir(path) else "does not exist"
    sys.exit(f"error: --{name}={value}: config file {path!r} {what} (cwd {os.getcwd()})")
  try:
    with open(path, "rb") as f:
      compile(f.read(), path, "exec")
  except SyntaxError as e:
    sys.exit(f"error: --{name}={value}: syntax error in {path} line {e.lineno}: {e.msg}")
  except (OSError, ValueError) as e:  # unreadable, or null bytes
    sys.exit(f"error: --{name}={value}: cannot read {path} ({e})")


def _config_error(name: str, value: str, e: BaseException) -> str:
  """One line for an exception raised while running the config file's get_config."""
  path = value.split(":", 1)[0]
  last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
  if "get_config() takes 0 positional arguments" in last:
    return f"error: --{name}={value}: {path} takes no variant (use --{name}={path})"
  if "get_config() takes" in last:
    return f"error: --{name}={value}: {path} takes a different number of variants ({last})"
  if not re.match(r"\w+(Error|Exception|Warning)\b", last):  # absl's text already names it
    last = f"{type(e).__name__}: {last}"
  return f"error: --{name}={value}: {last}"


def _raised_in(e: BaseException, path: str) -> bool:
  target = os.path.abspath(path)
  return any(os.path.abspath(frame.filename) == target
             for frame in traceback.extract_tb(e.__traceback__))


def parse_flags(argv: list[str]) -> list[str]:
  configs = [(name, value) for name in _config_file_flags() for value in _flag_values(argv, name)]
  for name, value in configs:
    _check_config_file(name, value)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    bad = [(n, v) for n, v in configs if f"--{n}=" in str(e) and "config file" in str(e)]
    if bad:  # absl wraps get_config's TypeError/ValueError with the whole traceback as text
      sys.exit(_config_error(*bad[0], e))
    sys.exit(f"error: {str(e).splitlines()[0]}")
  except Exception as e:  # noqa: BLE001  (anything else the config file itself raised)
    bad = [(n, v) for n, v in configs if _raised_in(e, v.split(":", 1)[0])]
    if bad:
      sys.exit(_config_error(*bad[0], e))
    if not isinstance(e, (AttributeError, KeyError, TypeError, ValueError)):
      raise
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    where = f" (in {' '.join(overrides)})" if overrides else ""
    sys.exit(f"error: bad config override{where}: {type(e).__name__}: {e}; unknown keys "
             "must be added to the config file first, values must have the key's type")
