"""Attention masks. Every mask is boolean, True meaning "may attend".

Masks broadcast to [B, H, T, S] (batch, heads, query length, key length); the
helpers return [B, 1, T, S] or [1, 1, T, S] so that they combine with `&`.

Padding and packing share one mechanism: a segment id per token, 0 for padding.
An unpacked, padded row has segment ids (ids != pad_id); a packed row numbers its
examples 1, 2, 3, ... A query may attend a key only inside its own non-zero segment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def causal_mask(length: int) -> Array:
  """[1, 1, T, T]: query t attends keys 0..t (the decoder's masking, §3.2.3)."""
  idx = jnp.arange(length)
  return (idx[:, None] >= idx[None, :])[None, None]


def segment_mask(q_segments: Array, kv_segments: Array) -> Array:
  """[B, T] and [B, S] segment ids -> [B, 1, T, S]: same non-zero segment."""
  same_BTS = q_segments[:, :, None] == kv_segments[:, None, :]
  real_BTS = (q_segments[:, :, None] != 0) & (kv_segments[:, None, :] != 0)
  return (same_BTS & real_BTS)[:, None]


def combine_masks(*masks: Array | None) -> Array | None:
  """Logical AND of the masks that are not None; None if all are None."""
  present = [m for m in masks if m is not None]
  if not present:
    return None
  out = present[0].astype(bool)
  for m in present[1:]:
    out = out & m.astype(bool)
  return out


def segments_from_ids(ids: Array, pad_id: int = 0) -> Array:
  """Segment ids of an unpacked batch: 1 for real tokens, 0 for padding."""
  return (ids != pad_id).astype(jnp.int32)


def positions_from_segments(segments: Array) -> Array:
  """Position of each token inside its segment (0-based); 0 at padding.

  Works for packed rows too: the position restarts whenever the segment id changes.
  """
  length = segments.shape[-1]
  idx = jnp.broadcast_to(jnp.arange(length), segments.shape)
  starts = jnp.concatenate(
      [jnp.ones_like(segments[..., :1], dtype=bool), segments[..., 1:] != segments[..., :-1]],
      axis=-1)
  # Index of the most recent segment start at or before each position.
  start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=segments.ndim - 1)
  return jnp.where(segments != 0, idx - start_idx, 0).astype(jnp.int32)
