"""The encoder-decoder Transformer (§3.1, Figure 1) and its blocks.

Shape legend: B batch, S source length, T target length, M d_model, V vocabulary.
Token id layout: the config's pad_id (0), bos_id (1), eos_id (2).

Padding and packing use segment ids (0 = padding; see `transformer.masks`), so an
unpacked batch and a packed one go through the same masks.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from transformer.config import TransformerConfig
from transformer.layers import (Embedding, FeedForward, MultiHeadAttention, PositionalEncoding,
                                layer_norm)
from transformer.masks import (causal_mask, combine_masks, positions_from_segments,
                               segment_mask, segments_from_ids)


class SublayerConnection(nn.Module):
  """Add & Norm around a sub-layer, with dropout on its output (§3.1, §5.4).

  post: LayerNorm(x + Dropout(Sublayer(x)))    (the paper)
  pre:  x + Dropout(Sublayer(LayerNorm(x)))
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, sublayer: Callable[[Array], Array], deterministic: bool) -> Array:
    cfg = self.config
    norm = layer_norm(cfg, "norm")
    drop = nn.Dropout(cfg.dropout_rate)
    if cfg.norm_position == "pre":
      return x + drop(sublayer(norm(x)), deterministic=deterministic)
    return norm(x + drop(sublayer(x), deterministic=deterministic))


class EncoderBlock(nn.Module):
  """Self-attention, Add & Norm, FFN, Add & Norm (§3.1)."""
  config: TransformerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BSM: Array, mask: Array) -> Array:
    cfg, det = self.config, self.deterministic
    attn = MultiHeadAttention(cfg, "encoder_self", name="self_attention")
    ffn = FeedForward(cfg, name="ffn")
    x_BSM = SublayerConnection(cfg, name="attention_sublayer")(
        x_BSM, lambda h: attn(h, h, mask, det), det)
    return SublayerConnection(cfg, name="ffn_sublayer")(x_BSM, lambda h: ffn(h, det), det)


class DecoderBlock(nn.Module):
  """Masked self-attention, cross-attention over the memory, FFN; each with Add & Norm.

  Without a memory (decoder-only language models) the cross-attention is absent.
  """
  config: TransformerConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, y_BTM: Array, self_mask: Array, memory_BSM: Array | None,
               cross_mask: Array | None) -> Array:
    cfg, det, dec = self.config, self.deterministic, self.decode
    self_attn = MultiHeadAttention(cfg, "decoder_self", name="self_attention")
    y_BTM = SublayerConnection(cfg, name="self_attention_sublayer")(
        y_BTM, lambda h: self_attn(h, h, self_mask, det, dec), det)
    if memory_BSM is not None:
      cross_attn = MultiHeadAttention(cfg, "cross", name="cross_attention")
      y_BTM = SublayerConnection(cfg, name="cross_attention_sublayer")(
          y_BTM, lambda h: cross_attn(h, memory_BSM, cross_mask, det, dec), det)
    ffn = FeedForward(cfg, name="ffn")
    return SublayerConnection(cfg, name="ffn_sublayer")(y_BTM, lambda h: ffn(h, det), det)


class _ScanLayer(nn.Module):
  """One block in nn.scan's (carry, xs) -> (carry, ys) form."""
  config: TransformerConfig
  kind: str
  deterministic: bool
  decode: bool

  @nn.compact
  def __call__(self, x: Array, *args) -> tuple[Array, None]:
    if self.kind == "encoder":
      block = EncoderBlock(self.config, self.deterministic, name="layer")
    else:
      block = DecoderBlock(self.config, self.deterministic, self.decode, name="layer")
    return block(x, *args), None


class LayerStack(nn.Module):
  """N encoder or decoder blocks: a Python loop, or one nn.scan (config.scan_layers).

  The scan compiles one block instead of N (much faster compilation) and stores the
  weights stacked on a leading layer axis; `transformer.params.stack_layers` converts.
  config.remat recomputes each block's activations in the backward pass.
  """
  config: TransformerConfig
  kind: str  # 'encoder' or 'decoder'

  @nn.compact
  def __call__(self, x: Array, *args: Array | None, deterministic: bool = True,
               decode: bool = False) -> Array:
    cfg = self.config
    n = cfg.num_encoder_layers if self.kind == "encoder" else cfg.num_decoder_layers
    if cfg.scan_layers:
      layer_cls = nn.remat(_ScanLayer) if cfg.remat else _ScanLayer
      stack = nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0, "intermediates": 0,
                                                 "perturbations": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast,) * len(args), length=n)
      x, _ = stack(cfg, self.kind, deterministic, decode, name="layers")(x, *args)
      return x
    for i in range(n):
      if self.kind == "encoder":
        block_cls = nn.remat(EncoderBlock) if cfg.remat else EncoderBlock
        x = block_cls(cfg, deterministic, name=f"{self.kind}_{i}")(x, *args)
      else:
        block_cls = nn.remat(DecoderBlock) if cfg.remat else DecoderBlock
        x = block_cls(cfg, deterministic, decode, name=f"{self.kind}_{i}")(x, *args)
    return x


def shift_right(targets_BT: Array, segments_BT: Array, bos_id: int, pad_id: int = 0) -> Array:
  """Decoder inputs for teacher forcing: BOS at each segment start, then the targets shifted.

  Segment-aware, so in a packed row no example sees the previous example's last token.
  """
  prev_BT = jnp.pad(targets_BT, ((0, 0), (1, 0)), constant_values=pad_id)[:, :-1]
  prev_seg_BT = jnp.pad(segments_BT, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  shifted_BT = jnp.where(prev_seg_BT == segments_BT, prev_BT, bos_id)
  return jnp.where(segments_BT != 0, shifted_BT, pad_id).astype(targets_BT.dtype)


class Transformer(nn.Module):
  """Encoder-decoder Transformer; with num_encoder_layers=0, a decoder-only model.

  encode: ids [B, S] -> memory [B, S, M]
  decode: memory + decoder input ids [B, T] -> logits [B, T, V] (float32)
  __call__: source and target ids -> logits for teacher-forced training
  """
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.target_embed = Embedding(cfg.output_vocab_size, cfg, name="target_embed")
    if cfg.share_embeddings:
      self.source_embed = self.target_embed
    elif not cfg.decoder_only:
      self.source_embed = Embedding(cfg.vocab_size, cfg, name="source_embed")
    if not cfg.share_embeddings:
      self.logits_dense = nn.Dense(cfg.output_vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                                   param_dtype=cfg.weights_dtype, name="logits_dense")
    self.dropout = nn.Dropout(cfg.dropout_rate)
    if not cfg.decoder_only:
      self.source_positions = PositionalEncoding(cfg, name="source_positions")
      self.encoder = LayerStack(cfg, "encoder", name="encoder")
    self.target_positions = PositionalEncoding(cfg, name="target_positions")
    self.decoder = LayerStack(cfg, "decoder", name="decoder")
    if cfg.norm_position == "pre":  # pre-LN stacks need a final normalisation
      if not cfg.decoder_only:
        self.encoder_norm = layer_norm(cfg, "encoder_norm")
      self.decoder_norm = layer_norm(cfg, "decoder_norm")

  def _segments_positions(self, ids, segments, positions):
    if segments is None:
      segments = segments_from_ids(ids, self.config.pad_id)
    if positions is None:
      positions = positions_from_segments(segments)
    return segments, positions

  def encode(self, inputs_BS: Array, inputs_segment_ids: Array | None = None,
             inputs_positions: Array | None = None, deterministic: bool = True) -> Array:
    cfg = self.config
    if cfg.decoder_only:
      raise ValueError("encode() called on a decoder-only model (num_encoder_layers=0)")
    segments, positions = self._segments_positions(inputs_BS, inputs_segment_ids,
                                                   inputs_positions)
    x_BSM = self.source_positions(self.source_embed(inputs_BS), positions)
    x_BSM = self.dropout(x_BSM, deterministic=deterministic)
    mask = segment_mask(segments, segments)
    x_BSM = self.encoder(x_BSM, mask, deterministic=deterministic)
    if cfg.norm_position == "pre":
      x_BSM = self.encoder_norm(x_BSM)
    return x_BSM

  def embed_targets(self, decoder_inputs_BT: Array, targets_positions: Array) -> Array:
    """Embedded, position-encoded decoder inputs [B, T, M] (before dropout)."""
    return self.target_positions(self.target_embed(decoder_inputs_BT), targets_positions)

  def decode_embedded(self, y_BTM: Array, targets_segment_ids: Array,
                      memory_BSM: Array | None = None, memory_segment_ids: Array | None = None,
                      deterministic: bool = True, decode: bool = False) -> Array:
    """The decoder stack and output projection over embedded inputs: logits [B, T, V].

    With decode=True (incremental decoding) the self-attention masks come from the cache.
    """
    cfg = self.config
    y_BTM = self.dropout(y_BTM, deterministic=deterministic)
    self_mask = combine_masks(segment_mask(targets_segment_ids, targets_segment_ids),
                              causal_mask(y_BTM.shape[1]))
    cross_mask = None
    if memory_BSM is not None:
      cross_mask = segment_mask(targets_segment_ids, memory_segment_ids)
    y_BTM = self.decoder(y_BTM, self_mask, memory_BSM, cross_mask, deterministic=deterministic,
                         decode=decode)
    if cfg.norm_position == "pre":
      y_BTM = self.decoder_norm(y_BTM)
    if cfg.share_embeddings:
      logits_BTV = self.target_embed.attend(y_BTM)
    else:
      logits_BTV = self.logits_dense(y_BTM)
    return logits_BTV.astype(jnp.float32)  # the loss's softmax runs in float32

  def decode(self, memory_BSM: Array | None, memory_segment_ids: Array | None,
             decoder_inputs_BT: Array, targets_segment_ids: Array | None = None,
             targets_positions: Array | None = None, deterministic: bool = True,
             decode: bool = False) -> Array:
    """Decoder input ids [B, T] (already shifted: BOS first) -> logits [B, T, V].

    decode=True: incremental decoding (see `transformer.decoding`); a step passes one
    token [B, 1] with its position and segment ids of ones.
    """
    if (memory_BSM is None) != self.config.decoder_only:
      raise ValueError("decode() needs a memory exactly when the model has an encoder")
    segments, positions = self._segments_positions(decoder_inputs_BT, targets_segment_ids,
                                                   targets_positions)
    y_BTM = self.embed_targets(decoder_inputs_BT, positions)
    return self.decode_embedded(y_BTM, segments, memory_BSM, memory_segment_ids, deterministic,
                                decode)

  def __call__(self, inputs: Array | None, targets: Array, *,
               inputs_segment_ids: Array | None = None,
               targets_segment_ids: Array | None = None,
               inputs_positions: Array | None = None,
               targets_positions: Array | None = None,
               deterministic: bool = True) -> Array:
    """Teacher-forced logits [B, T, V]: position t predicts targets[:, t].

    The keyword names are the data pipeline's batch keys: `model.apply(variables,
    **model_inputs(batch))`.
    """
    cfg = self.config
    tgt_segments, tgt_positions = self._segments_positions(targets, targets_segment_ids,
                                                           targets_positions)
    decoder_inputs_BT = shift_right(targets, tgt_segments, cfg.bos_id, cfg.pad_id)
    memory_BSM = src_segments = None
    if not cfg.decoder_only:
      if inputs is None:
        raise ValueError("an encoder-decoder model needs inputs")
      src_segments, src_positions = self._segments_positions(inputs, inputs_segment_ids,
                                                             inputs_positions)
      memory_BSM = self.encode(inputs, src_segments, src_positions, deterministic)
    return self.decode(memory_BSM, src_segments, decoder_inputs_BT, tgt_segments, tgt_positions,
                       deterministic)


MODEL_INPUTS = ("inputs", "targets", "inputs_segment_ids", "targets_segment_ids",
                "inputs_positions", "targets_positions")


def model_inputs(batch) -> dict:
  """The model's keyword arguments from a batch (other keys, such as `valid`, stay out).

  An image batch's one model input is `images` (`transformer.vit.VisionTransformer`); its
  `targets` (the labels) are the loss's.
  """
  if "images" in batch:
    return {"images": batch["images"]}
  return {"inputs": batch.get("inputs"),
          **{k: batch[k] for k in MODEL_INPUTS[1:] if k in batch}}
