"""Keep freed host memory in the process, so XLA:CPU's step buffers cost no page faults.

XLA's CPU runtime allocates each execution's temporaries with malloc (405 MiB for the
Multi30k step) and frees them when it ends. glibc hands out a block that large as a fresh
mmap, and from a runtime thread's own arena always does (a thread arena grows in heaps of
at most 64 MiB), so every step the kernel maps and zero-fills each page on first touch and
unmaps it at the free: 108k minor page faults a step, 27% of the Multi30k step's time on a
2-core Zen 3 (BUILD_NOTES.md, issue 16). With one arena for all threads, no mmap for large
blocks and no trimming of the heap's top, a freed block stays mapped and the next step's
malloc reuses it. Numbers are unchanged (the Multi30k recipe's 2,742 logged values equal to
the bit, in 45 min against 59). The costs: the process's resident memory stays at its peak,
and glibc's aligned blocks fragment the heap for the first ~16 calls of a new buffer size,
which fault until it settles.

`experiments/__init__.py` calls `keep_freed_memory()` before any entry point imports JAX,
and the test suite's conftest does the same. It must run before JAX starts its runtime
threads: a thread keeps the arena it first allocated from.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes: release no free top below 2 GiB


def supported() -> bool:
  """Whether this process's C library is glibc, whose malloc the policy sets."""
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory mapped; False where libc is not glibc."""
  if not supported():
    return False
  libc = ctypes.CDLL("libc.so.6")
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM))
  return all([libc.mallopt(param, value) == 1 for param, value in settings])  # all set
