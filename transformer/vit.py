"""The Vision Transformer (Dosovitskiy et al. 2020) on this project's encoder stack.

  x_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos      (§3.1, Eq. 1: patches, [CLS], positions)
  x_l = the project's EncoderBlock, l = 1..L         (Eq. 2-3 with pre-LN; post-LN as an option)
  y   = head(LN(x_L^0))                               (Eq. 4; or the mean over the patches: 'gap')

The encoder stack is `transformer.model.LayerStack` with the config's 'encoder_self'
attention kind and scale policy, so every scale policy (QK-norm included, the one
ViT-22B needs, Dehghani et al. 2023) and every kind applies to images unchanged; the
image is its N patches, none padded (mask None). `TransformerConfig`'s vocabulary and
decoder fields mean nothing here. `positional_encoding`: 'learned' (a table [L, M], the
paper), 'sinusoidal' (2-D: half the channels the patch row, half its column, as MAE;
the [CLS] token gets zeros) or 'none'.

Shape legend: B batch, H W image height and width (H = W), C channels, P patch size,
G = H / P patches per side, N = G * G patches, L tokens (N, + 1 with [CLS]), M d_model,
K classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from transformer.config import TransformerConfig, dataclass_from_mapping
from transformer.layers import layer_norm, sinusoidal_encoding
from transformer.model import LayerStack

POOLINGS = ("cls", "gap")  # a learned [CLS] token, or global average pooling of the patches


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The image side of a ViT (the experiment's `config.vision`); the encoder is `config.model`.

  image_size, num_channels and num_classes 0: the dataset's (`transformer.data.images`).
  """
  image_size: int = 224              # H = W, pixels
  patch_size: int = 16               # P: non-overlapping P x P patches are the tokens
  num_channels: int = 3              # C
  num_classes: int = 1000            # K
  pooling: str = "cls"               # one of POOLINGS

  def __post_init__(self):
    problems = [f"{name}={getattr(self, name)!r} must be a positive integer" for name in
                ("patch_size",) if not _positive(getattr(self, name))]
    problems += [f"{name}={getattr(self, name)!r} must be a positive integer (or 0: the "
                 "dataset's)" for name in ("image_size", "num_channels", "num_classes")
                 if not _positive(getattr(self, name)) and getattr(self, name) != 0]
    if self.pooling not in POOLINGS:
      problems.append(f"pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}")
    if not problems and self.image_size and self.image_size % self.patch_size:
      problems.append(f"image_size={self.image_size} is not divisible by patch_size="
                      f"{self.patch_size}")
    if problems:
      raise ValueError("invalid VisionConfig: " + "; ".join(problems))

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> "VisionConfig":
    return dataclass_from_mapping(cls, values, "VisionConfig field(s)")

  def replace(self, **changes: Any) -> "VisionConfig":
    return dataclasses.replace(self, **changes)

  @property
  def grid(self) -> int:
    """G: patches per side."""
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    """L: the patches, and the [CLS] token with 'cls' pooling."""
    return self.grid ** 2 + (self.pooling == "cls")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, self.num_channels)


def _positive(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_encoder(model_cfg: TransformerConfig) -> None:
  """ValueError (one line) for an encoder config a ViT cannot take."""
  if model_cfg.num_encoder_layers < 1:
    raise ValueError(f"num_encoder_layers={model_cfg.num_encoder_layers}: a ViT needs an "
                     "encoder (>= 1 layer)")
  if model_cfg.positional_encoding == "sinusoidal" and model_cfg.d_model % 4:
    raise ValueError(f"d_model={model_cfg.d_model} must be divisible by 4 for 2-D sinusoidal "
                     "position embeddings (half the channels per axis, sin and cos)")


def patchify(images_BHWC: Array, patch_size: int) -> Array:
  """Non-overlapping P x P patches in row-major order, each flattened (P, P, C): [B, N, P*P*C].

  A linear map of these patches is the P x P convolution with stride P (a test checks it).
  """
  B, H, W, C = images_BHWC.shape
  P = patch_size
  x = images_BHWC.reshape(B, H // P, P, W // P, P, C)   # [B, G_h, P, G_w, P, C]
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(B, (H // P) * (W // P), P * P * C)


def unpatchify(patches_BND: Array, patch_size: int, channels: int) -> Array:
  """The inverse of `patchify` for square images: [B, N, P*P*C] -> [B, H, W, C]."""
  B, N, _ = patches_BND.shape
  P, G = patch_size, int(round(N ** 0.5))
  x = patches_BND.reshape(B, G, G, P, P, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(B, G * P, G * P, channels)


def sinusoidal_2d(grid: int, d_model: int) -> Array:
  """2-D sin-cos position embeddings [G*G, M] (float32): the first M/2 channels encode the
  patch's row with §3.5's encoding, the last M/2 its column (He et al. 2022, MAE)."""
  rows, cols = jnp.meshgrid(jnp.arange(grid), jnp.arange(grid), indexing="ij")
  return jnp.concatenate([sinusoidal_encoding(rows.reshape(-1), d_model // 2),
                          sinusoidal_encoding(cols.reshape(-1), d_model // 2)], axis=-1)


def check_images(images: Any, vision: VisionConfig) -> None:
  """ValueError (one line) unless images are [B, H, W, C] of the configured shape."""
  shape = tuple(images.shape)
  if len(shape) != 4 or shape[1:] != vision.image_shape:
    raise ValueError(f"images of shape {shape}: the ViT takes [batch, {vision.image_size}, "
                     f"{vision.image_size}, {vision.num_channels}] (image_size="
                     f"{vision.image_size}, num_channels={vision.num_channels})")


class VisionTransformer(nn.Module):
  """images [B, H, W, C] (float, e.g. in [-1, 1]) -> class logits [B, K] (float32)."""
  config: TransformerConfig   # the encoder stack (its 'encoder_self' kind and scale)
  vision: VisionConfig

  @nn.compact
  def __call__(self, images: Array, *, deterministic: bool = True) -> Array:
    cfg, vis = self.config, self.vision
    check_encoder(cfg)
    if 0 in (vis.image_size, vis.num_channels, vis.num_classes):
      raise ValueError(f"{vis}: image_size, num_channels and num_classes 0 mean the dataset's; "
                       "fill them in (settings.vision_config) before building the model")
    check_images(images, vis)
    dense = lambda n, name: nn.Dense(n, dtype=cfg.compute_dtype,  # noqa: E731
                                     param_dtype=cfg.weights_dtype, name=name)
    x_BNM = dense(cfg.d_model, "patch_embedding")(
        patchify(images.astype(cfg.compute_dtype), vis.patch_size))
    B = x_BNM.shape[0]
    if vis.pooling == "cls":
      cls_11M = self.param("cls", nn.initializers.zeros, (1, 1, cfg.d_model), cfg.weights_dtype)
      x_BLM = jnp.concatenate([jnp.broadcast_to(cls_11M, (B, 1, cfg.d_model)).astype(
          x_BNM.dtype), x_BNM], axis=1)
    else:
      x_BLM = x_BNM
    L = x_BLM.shape[1]
    if cfg.positional_encoding == "learned":
      pos_LM = self.param("position_embedding", nn.initializers.normal(stddev=0.02),
                          (L, cfg.d_model), cfg.weights_dtype)
      x_BLM = x_BLM + pos_LM.astype(x_BLM.dtype)[None]
    elif cfg.positional_encoding == "sinusoidal":
      pos_NM = sinusoidal_2d(vis.grid, cfg.d_model)
      pos_LM = jnp.pad(pos_NM, ((L - pos_NM.shape[0], 0), (0, 0)))  # [CLS]: zeros
      x_BLM = x_BLM + pos_LM.astype(x_BLM.dtype)[None]
    x_BLM = nn.Dropout(cfg.dropout_rate)(x_BLM, deterministic=deterministic)
    x_BLM = LayerStack(cfg, "encoder", name="encoder")(x_BLM, None, deterministic=deterministic)
    if cfg.norm_position == "pre":  # pre-LN stacks need a final normalisation (Eq. 4's LN)
      x_BLM = layer_norm(cfg, "encoder_norm")(x_BLM)
    pooled_BM = x_BLM[:, 0] if vis.pooling == "cls" else jnp.mean(x_BLM, axis=1)
    return dense(vis.num_classes, "head")(pooled_BM).astype(jnp.float32)  # float32 softmax


# The common layout (google-research/vision_transformer): 224 x 224, 1,000 classes, [CLS],
# learned positions, pre-LN, GELU, biases in every projection, 12 layers, no dropout.
_COMMON = dict(num_encoder_layers=12, norm_position="pre", activation="gelu",
               attention_bias=True, positional_encoding="learned", dropout_rate=0.0)
VIT_PRESETS: dict[str, dict[str, Any]] = {  # Table 1 of Dosovitskiy et al.; Ti from DeiT
    "ViT-Ti/16": dict(d_model=192, num_heads=3, d_ff=768),
    "ViT-S/16": dict(d_model=384, num_heads=6, d_ff=1536),
    "ViT-B/16": dict(d_model=768, num_heads=12, d_ff=3072),
}


def vit_preset(name: str, **vision_overrides: Any) -> tuple[TransformerConfig, VisionConfig]:
  """(encoder config, vision config) of a named preset, e.g. 'ViT-B/16'."""
  if name not in VIT_PRESETS:
    raise ValueError(f"unknown ViT preset {name!r}; valid: {', '.join(VIT_PRESETS)}")
  patch = int(name.rsplit("/", 1)[1])
  # vocab_size: unused by a ViT (its tokens are patches), but a TransformerConfig field.
  model_cfg = TransformerConfig(vocab_size=1, **_COMMON, **VIT_PRESETS[name])
  return model_cfg, VisionConfig(patch_size=patch, **vision_overrides)


def count_parameters(model_cfg: TransformerConfig, vision: VisionConfig) -> int:
  """The ViT's parameter count (jax.eval_shape: no memory, no compute)."""
  image = jnp.zeros((1, *vision.image_shape), jnp.float32)
  shapes = jax.eval_shape(VisionTransformer(model_cfg, vision).init, jax.random.key(0), image)
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))
