"""The host allocator policy (`transformer.host_memory`): a freed block is reused, not refaulted.

Each case is a fresh process, since the policy has to be set before JAX starts its threads.
The probe's jitted function makes a 64 MiB temporary per call (logits-like, [2048, 8192]
float32: 16,384 pages of 4 KiB), which XLA frees at the end of the call; by default glibc
maps it afresh each call and every page faults on first touch.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from transformer import host_memory

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = 64 * 2**20 // 4096

PROBE = """
import resource, sys
if sys.argv[1] == "keep":
  from transformer import host_memory
  assert host_memory.keep_freed_memory()
elif sys.argv[1] == "entry_point":
  import experiments  # what every `python -m experiments.X` runs first
import jax, jax.numpy as jnp
x, w = jnp.ones((2048, 160), jnp.float32), jnp.ones((160, 8192), jnp.float32)
log_z = jax.jit(lambda x, w: jax.nn.logsumexp(x @ w, axis=1))
for _ in range(40):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  log_z(x, w).block_until_ready()
  print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(not host_memory.supported(),
                                reason="the policy is glibc's mallopt")


def calls_refaulting_their_block(mode: str) -> tuple[int, list[int]]:
  """Of the probe's last 20 calls, how many faulted half its block's pages in; all counts."""
  out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr
  faults = [int(line) for line in out.stdout.split()]
  return sum(f > PAGES / 2 for f in faults[-20:]), faults


def transparent_huge_pages_always() -> bool:
  path = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
  return path.exists() and "[always]" in path.read_text()


def test_kept_memory_is_reused_without_page_faults():
  # The heap settles within the first ~16 calls (XLA's aligned blocks fragment it at first),
  # then calls mostly stop faulting (under load a late one or two: 0-2 of the last 20 in 10
  # runs beside the test suite); without the policy all 20 fault.
  for mode in ("keep", "entry_point"):
    refaulted, faults = calls_refaulting_their_block(mode)
    assert refaulted <= 6, f"{mode}: {faults}"


@pytest.mark.skipif(transparent_huge_pages_always(), reason="2 MiB pages: few faults anyway")
def test_without_the_policy_every_call_faults_its_block_in():
  # The premise of the test above: without the policy the temporary's pages fault each call.
  refaulted, faults = calls_refaulting_their_block("none")
  assert refaulted >= 16, faults
