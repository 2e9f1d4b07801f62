"""Parameter bookkeeping without allocating weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from transformer.config import TransformerConfig
from transformer.model import Transformer


def parameter_shapes(cfg: TransformerConfig):
  """The parameter tree as ShapeDtypeStructs (jax.eval_shape: no memory, no compute)."""
  ids = jnp.ones((1, 4), jnp.int32)
  inputs = None if cfg.decoder_only else ids
  return jax.eval_shape(lambda: Transformer(cfg).init(jax.random.PRNGKey(0), inputs, ids))["params"]


def count_parameters(cfg: TransformerConfig) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(parameter_shapes(cfg)))
