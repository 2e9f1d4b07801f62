"""Flag parsing for the entry points: one-line errors instead of tracebacks.

`config_flags` applies `--config.KEY=VALUE` overrides while absl parses the command
line, so a misspelled key or a value of the wrong type raises inside the parser, before
`main`, with a long traceback. `app.run(main, flags_parser=parse_flags)` turns those
into one line naming the flag.
"""

from __future__ import annotations

import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    where = f" (in {' '.join(overrides)})" if overrides else ""
    sys.exit(f"error: bad config override{where}: {type(e).__name__}: {e}; unknown keys "
             "must be added to the config file first, values must have the key's type")
