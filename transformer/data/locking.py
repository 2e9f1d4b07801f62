"""A cross-process file lock, so that when several processes start at once one of them
prepares a dataset or trains a tokenizer while the others wait and then load it.

`fcntl.flock` is released by the kernel when its holder dies, so a crashed trainer never
leaves a stale lock behind. Only writers take it: data already prepared is read without
it, so a read-only cache works. (On NFS, flock may be local to one machine; prepare on one
host first, or use a local data_dir, when that matters.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator

from absl import logging


class LockError(ValueError):
  """The lock file cannot be created; the message is one line."""


@contextlib.contextmanager
def file_lock(path: str, timeout_s: float = 4 * 3600.0, poll_s: float = 0.2) -> Iterator[None]:
  """Holds an exclusive lock on `path` (created if needed); TimeoutError after timeout_s."""
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115  (closed below)
  except OSError as e:  # a read-only or non-directory data_dir: say so in one line
    why = ("part of its path is a file" if e.errno in (errno.EEXIST, errno.ENOTDIR)
           else e.strerror or str(e))
    raise LockError(f"cannot create the lock file {path}: {why}; the folder must be a "
                    f"writable directory to prepare data or train a vocabulary there") from None
  with handle:
    start = time.monotonic()
    announced = False
    while True:
      try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if not announced and timeout_s > 0:  # timeout 0 (the workdir lock): no waiting
          logging.info("waiting for %s (another process holds it)", path)
          announced = True
        if time.monotonic() - start > timeout_s:
          raise TimeoutError(f"{path}: lock still held by another process after {timeout_s:.0f} s")
        time.sleep(poll_s)
    try:
      yield
    finally:
      fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
