"""Data parallelism in one place: the per-device steps mapped over all devices.

Two backends give the same numbers:
  pmap       jax.pmap over the local devices (the design's default); state and
             outputs carry a leading local-device axis.
  shard_map  jax.jit(jax.shard_map(...)) over a 1-D mesh of all devices, JAX's
             successor to pmap (in maintenance mode since JAX 0.8); state is one
             global array replicated over the mesh.

Outside this module the loop sees neither layout: it hands over numpy batches
(this process's shard of the global batch) and gets numpy metrics back, and
checkpoints see global arrays replicated over the mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from transformer.step import AXIS

BACKENDS = ("pmap", "shard_map")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           auto: bool = False, cpu_collectives: str | None = None) -> None:
  """jax.distributed.initialize from explicit values, or auto-detected (SLURM, TPU, ...).

  Call before any other JAX work. With nothing given and auto False: single process.
  """
  if not (coordinator_address or auto):
    return
  if cpu_collectives:  # e.g. 'gloo', needed for cross-process collectives on CPU
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def check_batch_size(global_batch_size: int, backend: str) -> None:
  """The one-line errors for a batch the devices cannot split (before any compilation)."""
  if backend not in BACKENDS:
    raise ValueError(f"parallel.backend={backend!r} is not one of {', '.join(BACKENDS)}")
  devices = jax.device_count()
  if global_batch_size <= 0 or global_batch_size % devices:
    raise ValueError(f"batch_size={global_batch_size} is not divisible by the device count "
                     f"{devices} (data parallelism gives every device the same share)")


class DataParallel:
  """Maps per-device step functions over every device with the chosen backend."""

  def __init__(self, backend: str = "pmap", devices: Sequence[jax.Device] | None = None):
    """devices: all of them by default; a subset (single process) for tests."""
    if backend not in BACKENDS:
      raise ValueError(f"parallel.backend={backend!r} is not one of {', '.join(BACKENDS)}")
    self.backend = backend
    devices = list(devices or jax.devices())
    self.mesh = Mesh(np.array(devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))
    self.local_devices = [d for d in devices if d.process_index == jax.process_index()]
    # pmap's layout: a leading axis over this process's devices (what jax.pmap, built on
    # jit and shard_map since JAX 0.8, takes and returns).
    self.local_stacked = NamedSharding(Mesh(np.array(self.local_devices), ("local",)),
                                       P("local"))

  @property
  def _pmap_devices(self) -> list[jax.Device] | None:
    # pmap's devices= is for single-process subsets; across hosts it uses them all.
    return None if jax.process_count() > 1 else self.mesh.devices.tolist()

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  # Mapping the steps.
  def map_train_step(self, train_step: Callable) -> Callable:
    """(state, batch, rng) -> (state, metrics): state replicated, batch split, state donated."""
    if self.backend == "pmap":
      return jax.pmap(train_step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,),
                      devices=self._pmap_devices)
    # check_vma=False: gradients w.r.t. the replicated params stay per-device (as under
    # pmap) and the explicit lax.pmean averages them; with it on, JAX would psum them
    # implicitly and the pmean would not divide.
    mapped = jax.shard_map(train_step, mesh=self.mesh, in_specs=(P(), P(AXIS), P()),
                           out_specs=(P(), P()), check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,))

  def map_eval_step(self, eval_step: Callable) -> Callable:
    """(params, batch) -> metric sums."""
    if self.backend == "pmap":
      return jax.pmap(eval_step, axis_name=AXIS, in_axes=(0, 0), devices=self._pmap_devices)
    mapped = jax.shard_map(eval_step, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                           out_specs=P(), check_vma=False)
    return jax.jit(mapped)

  # Moving data in and out.
  def put_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's numpy shard of the global batch -> device arrays split over devices."""
    if self.backend == "pmap":
      n = len(self.local_devices)
      def split(x):
        if x.shape[0] % n:
          raise ValueError(f"per-process batch of {x.shape[0]} rows does not split over "
                           f"{n} local devices")
        return jax.device_put(x.reshape((n, -1) + x.shape[1:]), self.local_stacked)
      return {k: split(np.asarray(v)) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v))
            for k, v in batch.items()}

  def put_replicated(self, tree: Any) -> Any:
    """A host or global-replicated pytree -> the backend's replicated layout."""
    host = jax.tree.map(_local_value, tree)
    if self.backend == "pmap":  # one stacked copy per local device
      n = len(self.local_devices)
      return jax.device_put(jax.tree.map(lambda x: np.broadcast_to(x, (n,) + x.shape), host),
                            self.local_stacked)
    return jax.device_put(host, self.replicated)

  def to_global(self, tree: Any) -> Any:
    """The backend's replicated layout -> global arrays replicated over the mesh.

    This is what checkpoints save and restore: the same on either backend, and
    on several hosts Orbax writes each array once.
    """
    if self.backend == "shard_map":
      return tree
    def convert(x):
      shards = [s.data.reshape(x.shape[1:]) for s in x.addressable_shards]
      return jax.make_array_from_single_device_arrays(x.shape[1:], self.replicated, shards)
    return jax.tree.map(convert, tree)

  def abstract_global(self, tree: Any) -> Any:
    """ShapeDtypeStructs (per-replica shapes) with the replicated sharding: a restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=self.replicated), tree)

  def fetch(self, tree: Any) -> Any:
    """Replicated outputs (metrics) -> numpy, one copy."""
    if self.backend == "pmap":
      return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)
    return jax.tree.map(_local_value, tree)


def _local_value(x: Any) -> np.ndarray:
  """One local copy of a replicated value as numpy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_shards[0].data)
  return np.asarray(x)
