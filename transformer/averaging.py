"""Checkpoint averaging: the mean of the last N checkpoints' params (§6.1: the base
models average the last 5 checkpoints, written at 10-minute intervals; big, the last 20).

The average goes to WORKDIR/averaged/STEP (STEP = the newest step averaged), an Orbax
directory of its own holding `params` and `meta` = {steps, checksum}; checkpoints/ is
only read, so training can resume from it as if nothing happened, and the training
`Checkpointer` never mistakes the average for a newer training step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from transformer import checkpoint
from transformer import run as run_lib


def mean_params(trees: Iterable[Any]) -> Any:
  """Element-wise mean of same-structured trees, read one at a time (a generator keeps one
  checkpoint in memory besides the float64 running sum); cast back to each leaf's dtype."""
  total = dtypes = None
  count = 0
  for tree in trees:
    as64 = jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
    total = as64 if total is None else jax.tree.map(np.add, total, as64)
    dtypes = jax.tree.map(lambda x: np.asarray(x).dtype, tree)
    count += 1
  if not count:
    raise ValueError("no params to average")
  return jax.tree.map(lambda t, d: (t / count).astype(d), total, dtypes)


def average_last(workdir: str, last: int, *, overwrite: bool = False) -> dict[str, Any]:
  """Averages the newest `last` checkpoints of `workdir`; returns the average's meta.

  Raises run.RunError (one line, nothing written) for a bad request. An average
  of the same steps already on disk is kept and its meta returned with 'existing' True.
  """
  run = run_lib.load(workdir)
  if not isinstance(last, int) or last < 1:
    raise run_lib.RunError(f"--last={last!r} must be a positive integer")
  run_lib.check_checkpoint(run)   # "has no checkpoint ...; train first"
  steps = run_lib.steps_in(run_lib.checkpoints_dir(workdir))
  if len(steps) < last:
    raise run_lib.RunError(
        f"--last={last} but {workdir} holds {len(steps)} checkpoint(s) (steps "
        f"{', '.join(map(str, steps))}); the config's max_checkpoints_to_keep bounds how many "
        "a run keeps")
  chosen = steps[-last:]
  directory = run_lib.averaged_dir(workdir)
  existing = run_lib.steps_in(directory)
  if chosen[-1] in existing:
    _, meta = run_lib.restore_averaged_params(run, chosen[-1])
    if meta.get("steps") == chosen:
      return {**meta, "existing": True, "path": f"{directory}/{chosen[-1]}"}
    if not overwrite:
      raise run_lib.RunError(
          f"{directory}/{chosen[-1]} already holds the average of steps "
          f"{', '.join(map(str, meta.get('steps', [])))}; pass --overwrite to replace it")

  averaged = mean_params(run_lib.host_params(run_lib.restore_train_params(run, step))
                         for step in chosen)
  meta = {"step": chosen[-1], "steps": chosen, "checksum": int(checkpoint.tree_checksum(averaged))}

  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(directory, options=options) as mngr:
    if chosen[-1] in mngr.all_steps():  # only reached with overwrite=True
      mngr.delete(chosen[-1])
    mngr.save(chosen[-1], args=ocp.args.Composite(params=ocp.args.StandardSave(averaged),
                                                  meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()
  return {**meta, "existing": False, "path": f"{directory}/{chosen[-1]}"}
