"""One training per workdir: `with held(workdir): ...` around everything training writes.

The lock is WORKDIR/train.lock: the kernel lock of `data.locking.file_lock` (released by the
kernel when its holder dies, so a crash never blocks the next start) plus a one-line JSON
record of the holder ({host, pid, since}) that the refusal names. A clean exit empties the
record and leaves the file (removing it would let two starts lock two different files).

A record left behind (SIGKILL, a crash) is judged when the kernel lock is free:
- this host: the pid is gone (or was reused, since its holder no longer holds the kernel
  lock), so the lock is taken over with a warning;
- another host: flock may not reach across machines (NFS, Lustre), so whether it lives is
  unknown. Its holder touches the file every HEARTBEAT_S; a record untouched for STALE_S is
  taken over with a warning, a fresher one is refused.
Multi-host runs: process 0 holds the lock for all; the others learn from it whether it did.
Tools that only read a workdir (translate, evaluate, average) never take it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from transformer import settings
from transformer.data import locking

LOCK_FILE = "train.lock"
HEARTBEAT_S = 60.0
STALE_S = 600.0  # ten missed heartbeats: that host's training stopped (or cannot write)


class WorkdirInUseError(settings.ConfigError):
  """Another training holds the workdir (a ConfigError: the sweep re-raises, never records)."""


def _read(path: str) -> dict | None:
  """The holder record, or None for an empty (free) or half-written file."""
  for _ in range(5):  # the holder writes its record just after locking: wait for it briefly
    try:
      with open(path) as f:
        text = f.read().strip()
    except FileNotFoundError:
      return None
    if text:
      try:
        return json.loads(text)
      except ValueError:
        pass
    time.sleep(0.05)
  return None


def _describe(holder: dict | None) -> str:
  if not holder:
    return "another training (its record is not written yet)"
  return (f"a training on host {holder.get('host')}, pid {holder.get('pid')}, "
          f"since {holder.get('since')}")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _in_use(workdir: str, holder: dict | None, why: str = "") -> WorkdirInUseError:
  return WorkdirInUseError(f"workdir {workdir} is in use by {_describe(holder)}{why}; "
                           "wait for it, or stop it")


def _check_left_behind(workdir: str, path: str, holder: dict | None) -> None:
  """Kernel lock free, record present: take it over (warning) or raise WorkdirInUseError."""
  if not holder:
    return
  if holder.get("host") == socket.gethostname():
    logging.warning("workdir %s: taking over the lock of %s, which is gone", workdir,
                    _describe(holder))
    return
  age = time.time() - os.path.getmtime(path)
  if age < STALE_S:
    raise _in_use(workdir, holder, f" (another host, alive {age:.0f} s ago; its lock is "
                  f"taken over once {STALE_S:.0f} s stale, or delete {path} if it is gone)")
  logging.warning("workdir %s: taking over the lock of %s, silent for %.0f s", workdir,
                  _describe(holder), age)


@contextlib.contextmanager
def _hold_locally(workdir: str) -> Iterator[None]:
  path = os.path.join(workdir, LOCK_FILE)
  kernel_lock = contextlib.ExitStack()
  try:  # only the taking: a TimeoutError of the training itself (Orbax) is not "in use"
    # timeout 0: a second training fails at once rather than queueing behind the first.
    kernel_lock.enter_context(locking.file_lock(path, timeout_s=0))
  except TimeoutError:
    raise _in_use(workdir, _read(path)) from None
  except locking.LockError as e:  # check_workdir found it writable; it may have changed since
    raise settings.ConfigError(str(e)) from None
  with kernel_lock:
    _check_left_behind(workdir, path, _read(path))
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.datetime.now(datetime.timezone.utc).strftime(
                  "%Y-%m-%dT%H:%M:%SZ")}
    # In place, not replaced: the kernel lock is on this file's inode.
    with open(path, "w") as f:
      f.write(json.dumps(record) + "\n")
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(path, stop), daemon=True).start()
    previous = _release_on_sigterm(path)
    try:
      yield
    finally:
      if previous is not None:
        signal.signal(signal.SIGTERM, previous)
      stop.set()
      _clear(path)


def _heartbeat(path: str, stop: threading.Event) -> None:
  while not stop.wait(HEARTBEAT_S):
    with contextlib.suppress(OSError):
      os.utime(path)


def _clear(path: str) -> None:
  with contextlib.suppress(OSError), open(path, "w"):
    pass


def _release_on_sigterm(path: str):
  """Outside the loop's own handler (which saves first), SIGTERM still kills the process;
  this empties the record on the way, so the next start needs no take-over."""
  if threading.current_thread() is not threading.main_thread():
    return None
  previous = signal.getsignal(signal.SIGTERM)
  if previous not in (signal.SIG_DFL, None):
    return None  # someone else handles SIGTERM; the kernel lock is released at exit anyway

  def handle(signum, frame):
    _clear(path)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
  signal.signal(signal.SIGTERM, handle)
  return previous


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/train.lock for the whole run; raises WorkdirInUseError (one line)."""
  workdir = os.path.abspath(workdir)
  if jax.process_count() == 1:
    with _hold_locally(workdir):
      yield
    return
  # Process 0 locks for all; every process joins the allgather, so none hangs on a refusal.
  error, hold = None, contextlib.ExitStack()
  if jax.process_index() == 0:
    try:
      hold.enter_context(_hold_locally(workdir))
    except WorkdirInUseError as e:
      error = e
  refused = multihost_utils.process_allgather(np.int32(error is not None)).max()
  with hold:
    if refused:
      raise error or _in_use(workdir, _read(os.path.join(workdir, LOCK_FILE)),
                             " (process 0 could not lock it)")
    yield
