"""The per-device training and evaluation steps: pure functions over one device's batch.

Shape legend: B per-device batch, S source length, T target length (1 for a classifier:
the label of each image, `transformer.data.images`).

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
from transformer.model import model_inputs
from transformer.vit import VisionTransformer

AXIS = "batch"
Batch = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
  """What the optimizer carries from one step to the next (the dropout key lives outside)."""
  step: Array            # int32 scalar: train_step calls so far (micro-steps under accumulation)
  params: Any
  opt_state: Any


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: Array, *,
               source_length: int, target_length: int) -> TrainState:
  """Step 0: fresh parameters and optimizer state. Under `jax.eval_shape` it is the
  abstract state a checkpoint restores into (the shapes do not depend on the lengths)."""
  if isinstance(model, VisionTransformer):
    params = model.init(key, jnp.zeros((1, *model.vision.image_shape), jnp.float32))["params"]
  else:
    targets = jnp.ones((1, target_length), jnp.int32)
    inputs = None if model.config.decoder_only else jnp.ones((1, source_length), jnp.int32)
    params = model.init(key, inputs, targets)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def loss_sums(model: nn.Module, params: Any, batch: Batch, label_smoothing: float,
              dropout_key: Array | None = None, perturbations: Any = None) -> dict[str, Array]:
  """The teacher-forced metric sums of a batch (`losses.batch_metric_sums`); rows whose
  `valid` is False count 0. With a dropout key the model runs in training mode.
  perturbations: zeros the model adds to intermediate values (the diagnostics
  differentiate with respect to them)."""
  targets_BT = batch["targets"]
  segments_BT = batch.get("targets_segment_ids")
  weights_BT = losses.target_weights(targets_BT, segments_BT)
  if "valid" in batch:
    weights_BT = weights_BT * batch["valid"].astype(jnp.float32)[:, None]
  variables = {"params": params}
  if perturbations is not None:
    variables["perturbations"] = perturbations
  logits_BTV = model.apply(variables, **model_inputs(batch),
                           deterministic=dropout_key is None,
                           rngs=None if dropout_key is None else {"dropout": dropout_key})
  if "images" in batch:  # a classifier's logits [B, K] score its one target a row, [B, 1]
    logits_BTV = logits_BTV[:, None, :]
  return losses.batch_metric_sums(logits_BTV, targets_BT, weights_BT, segments_BT,
                                  label_smoothing)


def step_dropout_key(rng: Array, step: Array) -> Array:
  """A key unique to (step, global device index): no two devices or steps share a key.

  rng: the run's key data (uint32, JAX's default PRNG implementation) or a typed key.
  """
  key = jax.random.wrap_key_data(rng) if rng.dtype == jnp.uint32 else rng
  return jax.random.fold_in(jax.random.fold_in(key, step), lax.axis_index(AXIS))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    learning_rate_fn: Callable[[Array], Array], label_smoothing: float
                    ) -> Callable[[TrainState, Batch, Array], tuple[TrainState, dict[str, Array]]]:
  """train_step(state, batch, rng) -> (state, metrics); rng is the run's base key data."""

  def train_step(state: TrainState, batch: Batch, rng: Array):
    weights_BT = losses.target_weights(batch["targets"], batch.get("targets_segment_ids"))
    # The global token count is data, not a function of params: no gradient flows through it.
    global_tokens = jnp.maximum(lax.psum(weights_BT.sum(), AXIS), 1.0)
    num_devices = lax.psum(1, AXIS)
    dropout_key = step_dropout_key(rng, state.step)

    def loss_fn(params):
      sums = loss_sums(model, params, batch, label_smoothing, dropout_key)
      # Scaled so that the pmean of the per-device gradients is the gradient of the
      # global per-token mean loss.
      return sums["loss_sum"] * num_devices / global_tokens, sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS)
    sums = lax.psum(sums, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
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
    return lax.psum(loss_sums(model, params, batch, label_smoothing), AXIS)

  return eval_step
