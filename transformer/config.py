"""Model hyperparameters: a frozen dataclass, validated on construction.

Model code sees only this object, never flags, paths or the experiment config.
The presets follow Table 3 of the paper (base, big) plus small shapes for CPU work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from transformer.attention import IMPLEMENTATIONS, KINDS, ScalePolicy, parse_scale

NORM_POSITIONS = ("post", "pre")
_DEFAULT_POLICY = parse_scale("inv_sqrt_dk")
POSITIONAL_ENCODINGS = ("sinusoidal", "learned", "none")  # none: no position information
ACTIVATIONS = ("relu", "gelu")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_SITES = ("encoder_self", "decoder_self", "cross")  # where attention runs


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shapes and options of an encoder-decoder (or decoder-only) Transformer."""
  vocab_size: int                    # source vocabulary (the shared one when shared)
  target_vocab_size: int | None = None  # None: same as vocab_size
  d_model: int = 512
  num_heads: int = 8
  head_dim: int | None = None        # d_k = d_v per head; None: d_model // num_heads
  d_ff: int = 2048
  num_encoder_layers: int = 6        # 0 gives a decoder-only language model
  num_decoder_layers: int = 6
  dropout_rate: float = 0.1          # P_drop of §5.4: embeddings and sub-layer outputs
  attention_dropout_rate: float = 0.0
  ffn_dropout_rate: float = 0.0      # after the FFN's inner activation
  norm_position: str = "post"        # 'post' = LayerNorm(x + Sublayer(x)), the paper
  layer_norm_epsilon: float = 1e-6
  attention_kind: str = "dot_product"  # transformer.attention.KINDS, at every site
  attention_scale: str = "inv_sqrt_dk"  # a policy of transformer.attention, at every site
  # Per-site overrides of attention_kind / attention_scale (None: the setting above).
  encoder_self_attention_kind: str | None = None
  decoder_self_attention_kind: str | None = None
  cross_attention_kind: str | None = None
  encoder_self_attention_scale: str | None = None
  decoder_self_attention_scale: str | None = None
  cross_attention_scale: str | None = None
  # Queries scored at a time by kinds that build a [B, T, S, H, D] tensor (additive): the
  # same values in bounded memory. 16 was 2x faster than all at once (0) on a CPU, with
  # 1/6 of the memory (BUILD_NOTES, issue 14).
  attention_query_block: int = 16
  attention_implementation: str = "reference"  # or 'xla' / 'cudnn' (jax.nn.dot_product_attention)
  positional_encoding: str = "sinusoidal"
  activation: str = "relu"
  share_embeddings: bool = True      # encoder input, decoder input and pre-softmax (§3.4)
  # Biases on the attention projections W^Q, W^K, W^V, W^O. §3.2.2 writes them as matrices
  # only, as tensor2tensor and Flax's WMT example build them.
  attention_bias: bool = False
  scan_layers: bool = False          # nn.scan over blocks: compile one block, stacked weights
  remat: bool = False                # recompute block activations in the backward pass
  max_len: int = 512                 # longest position the learned encoding covers
  dtype: str = "float32"             # activations / matmul inputs
  param_dtype: str = "float32"
  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2

  def __post_init__(self):
    problems = []
    positive = ("vocab_size", "d_model", "num_heads", "d_ff", "num_decoder_layers", "max_len")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        problems.append(f"{name}={value!r} must be a positive integer")
    if self.target_vocab_size is not None and (
        not isinstance(self.target_vocab_size, int) or self.target_vocab_size <= 0):
      problems.append(f"target_vocab_size={self.target_vocab_size!r} must be a positive integer")
    if not isinstance(self.num_encoder_layers, int) or self.num_encoder_layers < 0:
      problems.append(f"num_encoder_layers={self.num_encoder_layers!r} must be >= 0")
    if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim <= 0):
      problems.append(f"head_dim={self.head_dim!r} must be a positive integer (or None: "
                      "d_model // num_heads)")
    if (self.head_dim is None and isinstance(self.d_model, int) and isinstance(self.num_heads, int)
        and self.num_heads > 0 and self.d_model % self.num_heads):
      problems.append(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                      "set head_dim to decouple them")
    if not isinstance(self.attention_query_block, int) or self.attention_query_block < 0:
      problems.append(f"attention_query_block={self.attention_query_block!r} must be an integer "
                      ">= 0 (0: all queries at once)")
    for name in ("dropout_rate", "attention_dropout_rate", "ffn_dropout_rate"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        problems.append(f"{name}={value!r} must be in [0, 1)")
    for name, value, valid in (("norm_position", self.norm_position, NORM_POSITIONS),
                               ("positional_encoding", self.positional_encoding,
                                POSITIONAL_ENCODINGS),
                               ("activation", self.activation, ACTIVATIONS),
                               ("attention_implementation", self.attention_implementation,
                                IMPLEMENTATIONS),
                               ("dtype", self.dtype, DTYPES),
                               ("param_dtype", self.param_dtype, DTYPES)):
      if value not in valid:
        problems.append(f"{name}={value!r} is not one of {', '.join(valid)}")
    for name in ("attention_bias", "share_embeddings", "scan_layers", "remat"):
      if not isinstance(getattr(self, name), bool):
        problems.append(f"{name}={getattr(self, name)!r} must be True or False")
    if self.positional_encoding == "sinusoidal" and isinstance(self.d_model, int) \
        and self.d_model % 2:
      problems.append(f"d_model={self.d_model} must be even for sinusoidal positional encoding")
    if self.share_embeddings and self.target_vocab_size not in (None, self.vocab_size):
      problems.append(f"share_embeddings needs one vocabulary, got vocab_size={self.vocab_size} "
                      f"and target_vocab_size={self.target_vocab_size}")
    # Kinds and scale policies per site, parsed here once: the attention layers read them.
    # A kind without a scale (additive) ignores the global attention_scale, which applies
    # to the scaled sites; it is refused where it reaches no site, as is a site's own
    # scale on an unscaled kind.
    kinds, policies = {}, {}
    global_scale_used = False
    for site in ATTENTION_SITES:
      kind_key = self._site_key(site, "kind")
      kinds[site] = getattr(self, kind_key)
      if kinds[site] not in KINDS:
        problems.append(f"{kind_key}={kinds[site]!r} is not one of {', '.join(KINDS)}")
        continue
      scale_key = self._site_key(site, "scale")
      try:
        policies[site] = parse_scale(getattr(self, scale_key))
      except ValueError as e:
        problems.append(f"{scale_key}: {e}")
        continue
      if KINDS[kinds[site]].scaled:
        global_scale_used |= scale_key == "attention_scale"
      elif scale_key != "attention_scale" and policies[site] != _DEFAULT_POLICY:
        problems.append(f"{kind_key}={kinds[site]!r} has no scale, so {scale_key}="
                        f"{getattr(self, scale_key)!r} means nothing for it; leave it unset")
      if not KINDS[kinds[site]].scaled:
        policies[site] = _DEFAULT_POLICY  # nothing to scale (no softcap, no qk_norm)
      if kinds[site] != "dot_product" and self.attention_implementation != "reference":
        problems.append(f"attention_implementation={self.attention_implementation!r} runs "
                        f"dot_product attention only, not {kind_key}={kinds[site]!r}")
    if (not global_scale_used and not problems and parse_scale(self.attention_scale)
        != _DEFAULT_POLICY and any(not KINDS[k].scaled for k in kinds.values())):
      problems.append(f"attention_scale={self.attention_scale!r} means nothing here: no "
                      "attention site uses it (every site has a kind without a scale, such "
                      "as additive, or its own scale); leave it at 'inv_sqrt_dk'")
    if problems:  # a global key shared by the sites is named once
      raise ValueError("invalid TransformerConfig: " + "; ".join(dict.fromkeys(problems)))
    object.__setattr__(self, "_site_kinds", kinds)  # derived, not fields
    object.__setattr__(self, "_scale_policies", policies)

  def _site_key(self, site: str, what: str) -> str:
    """The field that sets a site's kind or scale: its override if set, else the global one."""
    key = f"{site}_attention_{what}"
    return key if getattr(self, key) is not None else f"attention_{what}"

  # Derived values.
  @property
  def d_k(self) -> int:
    """Per-head width of queries, keys and values (d_k = d_v)."""
    return self.head_dim or self.d_model // self.num_heads

  @property
  def output_vocab_size(self) -> int:
    return self.target_vocab_size or self.vocab_size

  @property
  def decoder_only(self) -> bool:
    return self.num_encoder_layers == 0

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weights_dtype(self):
    return jnp.dtype(self.param_dtype)

  def attention_kind_at(self, site: str) -> str:
    """The attention kind of 'encoder_self', 'decoder_self' or 'cross' attention."""
    return self._site_kinds[site]

  def scale_policy(self, site: str) -> ScalePolicy:
    """The parsed scale policy of 'encoder_self', 'decoder_self' or 'cross' attention."""
    return self._scale_policies[site]

  def replace(self, **changes: Any) -> "TransformerConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> "TransformerConfig":
    """Builds from a dict-like (e.g. an ml_collections `config.model`), naming unknown keys."""
    return dataclass_from_mapping(cls, values, "TransformerConfig field(s)")

  # Presets. Table 3 of the paper; the small ones are for CPU experiments and tests.
  @classmethod
  def base(cls, **overrides: Any) -> "TransformerConfig":
    return cls(**{**dict(vocab_size=37000, d_model=512, num_heads=8, d_ff=2048,
                         num_encoder_layers=6, num_decoder_layers=6, dropout_rate=0.1),
                  **overrides})

  @classmethod
  def big(cls, **overrides: Any) -> "TransformerConfig":
    return cls(**{**dict(vocab_size=37000, d_model=1024, num_heads=16, d_ff=4096,
                         num_encoder_layers=6, num_decoder_layers=6, dropout_rate=0.3),
                  **overrides})

  @classmethod
  def small(cls, **overrides: Any) -> "TransformerConfig":
    """A 3+3-layer, d_model 256 model for Multi30k-sized data on a CPU."""
    return cls(**{**dict(vocab_size=8000, d_model=256, num_heads=4, d_ff=1024,
                         num_encoder_layers=3, num_decoder_layers=3, dropout_rate=0.1),
                  **overrides})

  @classmethod
  def tiny(cls, **overrides: Any) -> "TransformerConfig":
    """A 2+2-layer, d_model 64 model for synthetic tasks and tests."""
    return cls(**{**dict(vocab_size=64, d_model=64, num_heads=4, d_ff=128,
                         num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
                         max_len=128),
                  **overrides})


def dataclass_from_mapping(cls, values: Mapping[str, Any], what: str):
  """cls(**values) for a dict or ml_collections.ConfigDict, naming unknown keys first.

  Shared by the model, data and optimizer configs, so every config section rejects a
  misspelled key the same way.
  """
  values = values.to_dict() if hasattr(values, "to_dict") else dict(values)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"unknown {what}: {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
  return cls(**values)


PRESETS = ("base", "big", "small", "tiny")


def preset(name: str, **overrides: Any) -> TransformerConfig:
  """TransformerConfig.<name>(**overrides), with a clear error for an unknown name."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}")
  return getattr(TransformerConfig, name)(**overrides)
