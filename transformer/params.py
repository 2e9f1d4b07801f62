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


def stack_layers(params, cfg: TransformerConfig):
  """Loop-layout parameters -> the nn.scan layout (config.scan_layers=True).

  {'encoder': {'encoder_0': p0, 'encoder_1': p1}} -> {'encoder': {'layers': {'layer': [p0; p1]}}}
  """
  out = dict(params)
  for kind, n in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    if kind in params and n:
      layers = [params[kind][f"{kind}_{i}"] for i in range(n)]
      out[kind] = {"layers": {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}}
  return out


def unstack_layers(params, cfg: TransformerConfig):
  """The inverse of `stack_layers`."""
  out = dict(params)
  for kind, n in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    if kind in params and n:
      stacked = params[kind]["layers"]["layer"]
      out[kind] = {f"{kind}_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)}
  return out
