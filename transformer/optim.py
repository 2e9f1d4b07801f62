"""The optimizer: Adam with the paper's learning-rate schedule, built from Optax pieces (§5.3).

  lrate = factor * d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5)   (Eq. 3)

with Adam beta1 0.9, beta2 0.98, eps 1e-9. Alternatives: linear warmup to a peak
then inverse square root or cosine decay, a constant rate; optional decoupled weight
decay (optax.adamw), global-norm clipping and gradient accumulation (optax.MultiSteps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from transformer.config import dataclass_from_mapping

SCHEDULES = ("paper", "warmup_rsqrt", "warmup_cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer hyperparameters (the experiment's `config.optim`)."""
  schedule: str = "paper"          # one of SCHEDULES
  learning_rate_factor: float = 1.0  # 'paper': the factor in front of Eq. 3
  learning_rate: float = 1e-3      # the peak, for the other schedules
  warmup_steps: int = 4000         # §5.3
  decay_steps: int = 0             # 'warmup_cosine': total steps (0: the run's length)
  end_learning_rate: float = 0.0   # 'warmup_cosine': the floor
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-9
  weight_decay: float = 0.0        # decoupled (AdamW); matrices only, never biases or norms
  grad_clip_norm: float = 0.0      # clip by global norm; 0 disables
  grad_accum_steps: int = 1        # micro-batches per update (optax.MultiSteps)

  def __post_init__(self):
    problems = []
    if self.schedule not in SCHEDULES:
      problems.append(f"schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
    for name in ("learning_rate_factor", "learning_rate"):
      if not getattr(self, name) > 0:
        problems.append(f"{name}={getattr(self, name)!r} must be > 0")
    for name in ("warmup_steps", "decay_steps"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 0:
        problems.append(f"{name}={value!r} must be an integer >= 0")
    if self.schedule == "paper" and self.warmup_steps < 1:
      problems.append("the 'paper' schedule needs warmup_steps >= 1")
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        problems.append(f"{name}={getattr(self, name)!r} must be in [0, 1)")
    for name in ("eps", "weight_decay", "grad_clip_norm", "end_learning_rate"):
      if getattr(self, name) < 0:
        problems.append(f"{name}={getattr(self, name)!r} must be >= 0")
    if not isinstance(self.grad_accum_steps, int) or self.grad_accum_steps < 1:
      problems.append(f"grad_accum_steps={self.grad_accum_steps!r} must be an integer >= 1")
    if problems:
      raise ValueError("invalid optim config: " + "; ".join(problems))

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> "OptimConfig":
    return dataclass_from_mapping(cls, values, "optim config key(s)")


def paper_schedule(d_model: int, warmup_steps: int, factor: float = 1.0) -> optax.Schedule:
  """Eq. 3 of §5.3. Optax counts updates from 0, the paper from 1: step_num = count + 1."""
  def schedule(count):
    step_num = jnp.asarray(count, jnp.float32) + 1.0
    return factor * d_model ** -0.5 * jnp.minimum(step_num ** -0.5,
                                                  step_num * warmup_steps ** -1.5)
  return schedule


def make_schedule(cfg: OptimConfig, d_model: int, num_updates: int) -> optax.Schedule:
  """The learning rate as a function of the optimizer-update count."""
  if cfg.schedule == "paper":
    return paper_schedule(d_model, cfg.warmup_steps, cfg.learning_rate_factor)
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.learning_rate)
  warmup = max(cfg.warmup_steps, 1)
  peak = cfg.learning_rate
  if cfg.schedule == "warmup_cosine":
    decay_steps = max(cfg.decay_steps or num_updates, warmup + 1)
    # Starts at peak / warmup, not 0, so that the first update is not wasted.
    return optax.warmup_cosine_decay_schedule(peak / warmup, peak, warmup, decay_steps,
                                              cfg.end_learning_rate)

  # warmup_rsqrt: Eq. 3 with the peak given directly (reached at step_num = warmup):
  # linear warmup, then peak * sqrt(warmup / step_num). Optax has no inverse-sqrt decay.
  def schedule(count):
    step_num = jnp.asarray(count, jnp.float32) + 1.0
    return peak * jnp.minimum(step_num / warmup, jnp.sqrt(warmup / step_num))
  return schedule


def _decay_mask(params):
  """Weight decay on matrices (kernels, embeddings) only: not on biases, norms, scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig, d_model: int,
                   num_train_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, schedule). With gradient accumulation one update spans grad_accum_steps steps."""
  num_updates = max(num_train_steps // cfg.grad_accum_steps, 1)
  schedule = make_schedule(cfg, d_model, num_updates)
  clip = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm else []
  # AdamW is Adam when weight_decay is 0 (it adds 0 * params): one optimizer, not two.
  tx = optax.chain(*clip, optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                      weight_decay=cfg.weight_decay, mask=_decay_mask))
  if cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps).gradient_transformation()
  return tx, schedule


def learning_rate_at(schedule: optax.Schedule, cfg: OptimConfig, step) -> jax.Array:
  """The rate used by the update at training step `step` (accumulation-aware), for logging."""
  return schedule(jnp.asarray(step) // cfg.grad_accum_steps)
