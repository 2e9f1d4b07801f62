"""Orbax checkpoints of a run: state, RNG key, input-iterator position and a checksum.

One checkpoint step holds three items (CheckpointManager's `args` API):
  state  ocp.args.StandardSave   {'train': TrainState, 'rng': uint32 key data}
  data   grain.checkpoint.CheckpointSave   the Grain iterator's state, one file per process
  meta   ocp.args.JsonSave       step and the checksum of `state`

Orbax writes into a temporary directory and renames it when complete, so a save
cut short (SIGKILL) leaves no step behind. A step that is complete but unreadable
or whose content does not match its checksum is moved aside to
`WORKDIR/corrupt_checkpoints/` and the previous one restored, with a warning.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


def _leaf_checksum(x: jax.Array) -> jax.Array:
  bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
  bits = bits.astype(jnp.uint32).reshape(-1)
  # Position-weighted so that swapped elements change the sum too; uint32 wraps exactly.
  weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit
def tree_checksum(tree: Any) -> jax.Array:
  """An exact uint32 fingerprint of every bit of a pytree of <=32-bit arrays.

  Integer sums are exact in any order, so the value does not depend on devices or
  on how XLA reduces; computing it is one cheap pass over the parameters.
  """
  total = jnp.uint32(0)
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    total = total * jnp.uint32(1000003) + _leaf_checksum(leaf) + jnp.uint32(i)
  return total


class CorruptCheckpointError(RuntimeError):
  pass


class Checkpointer:
  """Save / restore of a run's checkpoints under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.workdir = workdir
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, rng: Any, iterator: Any) -> None:
    """Starts saving (asynchronously); `state` holds global, replicated arrays."""
    checksum = int(tree_checksum({"train": state, "rng": rng}))
    args = {"state": ocp.args.StandardSave({"train": state, "rng": rng}),
            "meta": ocp.args.JsonSave({"step": int(step), "checksum": checksum})}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(iterator)
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore_latest(self, abstract_state: Any, iterator: Any,
                     on_fallback: Callable[[str], None] = logging.warning
                     ) -> tuple[int, Any, Any, dict] | None:
    """(step, train state, rng, meta) of the newest good checkpoint, or None if none exist.

    `abstract_state` is {'train': ..., 'rng': ...} of ShapeDtypeStructs with shardings.
    Unreadable steps are moved aside (never deleted) and the next older one is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        tree, meta = restore_verified(self.manager, step, "state", abstract_state, iterator)
        return step, tree["train"], tree["rng"], meta
      except Exception as e:  # noqa: BLE001  (any failure to read means: do not trust it)
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        older = [s for s in self.all_steps() if s < step]
        on_fallback(f"checkpoint at step {step} is unreadable or corrupt ({type(e).__name__}: "
                    f"{reason}); moved to corrupt_checkpoints/, resuming from "
                    + (f"step {older[-1]}" if older else "scratch"))
        self._quarantine(step)
    return None

  def _quarantine(self, step: int) -> None:
    source = os.path.join(self.directory, str(step))
    if jax.process_index() == 0 and os.path.exists(source):
      target_dir = os.path.join(self.workdir, "corrupt_checkpoints")
      os.makedirs(target_dir, exist_ok=True)
      os.rename(source, os.path.join(target_dir, f"{step}-{int(time.time())}"))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine_checkpoint_{step}")
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until the pending asynchronous save is on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_verified(manager: ocp.CheckpointManager, step: int, item: str, target: Any,
                     iterator: Any = None) -> tuple[Any, dict[str, Any]]:
  """(tree, meta) of item `item` of a step, restored into `target` (ShapeDtypeStructs with
  shardings), and the Grain iterator's position if one is given. Raises
  CorruptCheckpointError when the content does not match the checksum recorded in `meta`."""
  args = {item: ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
  if iterator is not None:
    args["data"] = grain.checkpoint.CheckpointRestore(iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**args))
  tree, meta = restored[item], dict(restored["meta"])
  if int(meta.get("step", -1)) != step:
    raise CorruptCheckpointError(f"its meta records step {meta.get('step')}")
  checksum = int(tree_checksum(tree))
  if checksum != meta.get("checksum"):
    raise CorruptCheckpointError(f"checksum {checksum} != recorded {meta.get('checksum')}")
  return tree, meta


def host_copy(tree: Any) -> Any:
  """numpy copies of (replicated) arrays, e.g. to compare parameters bit for bit."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)
                      if isinstance(x, jax.Array) else np.asarray(x), tree)
