"""The per-device training and evaluation steps: pure functions over one device's batch.

Shape legend: B per-device batch, S source length, T target length.

They run under a named axis `AXIS` ('batch') and combine across devices with
`lax.pmean` (gradients) and `lax.psum` (metric sums); `transformer.parallel` maps
them over all devices with pmap or shard_map, in one place. The loss is normalised
by the *global* token count, so the update does not depend on how the global batch
is split over devices (1 and 4 devices agree up to float summation order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import Array, lax

from transformer import losses
from transformer import rng as rng_lib

AXIS = "batch"
Batch = Mapping[str, Array]

# The data pipeline's names for the model's keyword arguments.
_MODEL_KWARGS = {"inputs_segmentation": "inputs_segmentation",
                 "targets_segmentation": "targets_segmentation",
                 "inputs_position": "inputs_positions", "inputs_positions": "inputs_positions",
                 "targets_position": "targets_positions", "targets_positions": "targets_positions"}


@flax.struct.dataclass
class TrainState:
  """What the optimizer carries from one step to the next (the dropout key lives outside)."""
  step: Array            # int32 scalar: train_step calls so far (micro-steps under accumulation)
  params: Any
  opt_state: Any


def model_kwargs(batch: Batch) -> dict[str, Array]:
  return {_MODEL_KWARGS[k]: v for k, v in batch.items() if k in _MODEL_KWARGS}


def step_dropout_key(rng: Array, step: Array, dropout_rng: str = "threefry") -> Array:
  """A key unique to (step, global device index): no two devices or steps share a key.

  rng: the run's uint32[2] key data (or a typed key); dropout_rng: its PRNG
  implementation (`transformer.rng`).
  """
  key = rng_lib.dropout_key(rng, dropout_rng) if rng.dtype == jnp.uint32 else rng
  return jax.random.fold_in(jax.random.fold_in(key, step), lax.axis_index(AXIS))


def _global_norm(tree: Any) -> Array:
  """The gradient's global L2 norm, over all leaves raveled into one vector.

  The same concatenation as optax.flatten's, so with flat Adam moments XLA computes it
  once for both (one reduction instead of one per leaf: less to compile).
  """
  flat = jnp.concatenate([jnp.reshape(leaf, [-1]) for leaf in jax.tree.leaves(tree)])
  return jnp.sqrt(jnp.sum(jnp.square(flat.astype(jnp.float32))))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    learning_rate_fn: Callable[[Array], Array],
                    label_smoothing: float, dropout_rng: str = "threefry"
                    ) -> Callable[[TrainState, Batch, Array], tuple[TrainState, dict[str, Array]]]:
  """train_step(state, batch, rng) -> (state, metrics); rng is the run's base key data.

  dropout_rng: the PRNG implementation of the dropout keys (`transformer.rng`).
  """
  rng_lib.check_name(dropout_rng)  # a bad name fails here, not inside the trace

  def train_step(state: TrainState, batch: Batch, rng: Array):
    targets_BT = batch["targets"]
    segments_BT = batch.get("targets_segmentation")
    weights_BT = losses.target_weights(targets_BT, segments_BT)
    # The global token count is data, not a function of params: no gradient flows through it.
    global_tokens = jnp.maximum(lax.psum(weights_BT.sum(), AXIS), 1.0)
    num_devices = lax.psum(1, AXIS)
    dropout_key = step_dropout_key(rng, state.step, dropout_rng)

    def loss_fn(params):
      logits_BTV = model.apply({"params": params}, batch.get("inputs"), targets_BT,
                               **model_kwargs(batch), deterministic=False,
                               rngs={"dropout": dropout_key})
      sums = losses.batch_metric_sums(logits_BTV, targets_BT, weights_BT, segments_BT,
                                      label_smoothing)
      # Scaled so that the pmean of the per-device gradients is the gradient of the
      # global per-token mean loss.
      return sums["loss_sum"] * num_devices / global_tokens, sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS)
    sums = lax.psum(sums, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = _global_norm(grads)
    # The NaN guard: a non-finite loss or gradient leaves params and optimizer state as
    # they were, so bad numbers never reach a checkpoint; the loop stops on the flag.
    finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           opt_state=keep(opt_state, state.opt_state))
    metrics = {**sums, "grad_norm": grad_norm,
               "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
               "nonfinite": (~finite).astype(jnp.float32)}
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, label_smoothing: float
                   ) -> Callable[[Any, Batch], dict[str, Array]]:
  """eval_step(params, batch) -> metric sums over all devices; rows with valid=False count 0."""

  def eval_step(params: Any, batch: Batch):
    targets_BT = batch["targets"]
    segments_BT = batch.get("targets_segmentation")
    weights_BT = losses.target_weights(targets_BT, segments_BT)
    if "valid" in batch:
      weights_BT = weights_BT * batch["valid"].astype(jnp.float32)[:, None]
    logits_BTV = model.apply({"params": params}, batch.get("inputs"), targets_BT,
                             **model_kwargs(batch), deterministic=True)
    sums = losses.batch_metric_sums(logits_BTV, targets_BT, weights_BT, segments_BT,
                                    label_smoothing)
    return lax.psum(sums, AXIS)

  return eval_step
