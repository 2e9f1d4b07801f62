"""Model FLOPs of a training step: the matmuls, counted by hand from the config.

Shape legend: B batch, S source length, T target length, M d_model, F d_ff,
V output vocabulary, L_e / L_d encoder / decoder layers, H heads, D d_k (H D = M unless
head_dim is set). A matmul [m, k] x [k, n]
costs 2 m k n FLOPs (one multiply and one add per term).

Forward pass, per step:

  encoder layer     B S (4 * 2 M H D)        Q, K, V, output projections
                    B S (2 * 2 M F)          FFN, both matmuls
                    2 * 2 B S^2 H D          scores Q K^T and weights x V
  decoder layer     B T (4 * 2 M H D) + B T (2 * 2 M F) + 2 * 2 B T^2 H D  (self-attention
                    is counted in full, as the step computes it: the causal mask zeroes
                    half of it but the matmul still runs)
    cross-attention B T (2 * 2 M H D)        Q and output projections over the targets
                    B S (2 * 2 M H D)        K, V projections over the memory
                    2 * 2 B T S H D          scores and weighted sum
  output logits     2 B T M V

  training step = 3 * forward   (the backward pass costs two matmuls per forward one:
                                 the gradients with respect to inputs and to weights)

Additive scores w_h^T tanh(q + k) are counted as the same 2 B T S H D as Q K^T (the
contraction with w), so both kinds are measured against one formula; not counted are
their B T S H D additions and B T S H D tanh evaluations, elementwise work as large as
the contraction itself (and again in the backward pass), the price of additive attention.

Not counted: embedding lookups (gathers), biases, LayerNorm, softmax, dropout, the
loss and the optimizer update; they are elementwise, O(B T M) against O(B T M^2),
and are the overhead MFU exposes. This is the convention of Kaplan et al. (2020)
(6 N FLOPs per token plus the attention terms) and of the PaLM paper's MFU (Appendix B).
"""

from __future__ import annotations

import dataclasses

from transformer.config import TransformerConfig


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """Forward-pass FLOPs by part; `train` is the training step (forward + backward)."""
  encoder: int
  decoder: int
  logits: int

  @property
  def forward(self) -> int:
    return self.encoder + self.decoder + self.logits

  @property
  def train(self) -> int:
    return 3 * self.forward


def _attention_block(tokens_q: int, tokens_kv: int, batch_len_q_kv: int, d_model: int,
                     width: int) -> int:
  """Q and output projections over tokens_q, K and V over tokens_kv, plus QK^T and PV.

  batch_len_q_kv is B * T_q * S_kv, the number of (query, key) pairs; width is H * D.
  """
  projections = 2 * 2 * tokens_q * d_model * width + 2 * 2 * tokens_kv * d_model * width
  scores_and_sum = 2 * 2 * batch_len_q_kv * width
  return projections + scores_and_sum


def _ffn(tokens: int, d_model: int, d_ff: int) -> int:
  return 2 * 2 * tokens * d_model * d_ff


def step_flops(cfg: TransformerConfig, batch: int, source_length: int,
               target_length: int) -> StepFlops:
  """The model FLOPs of one step over a [batch, source_length] x [batch, target_length] batch."""
  for name, value in (("batch", batch), ("source_length", source_length),
                      ("target_length", target_length)):
    if value <= 0 and not (name == "source_length" and cfg.decoder_only):
      raise ValueError(f"{name}={value} must be positive")
  M, F, HD = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.d_k
  src = batch * source_length
  tgt = batch * target_length
  encoder = 0
  if not cfg.decoder_only:
    per_layer = _attention_block(src, src, batch * source_length ** 2, M, HD) + _ffn(src, M, F)
    encoder = cfg.num_encoder_layers * per_layer
  per_layer = _attention_block(tgt, tgt, batch * target_length ** 2, M, HD) + _ffn(tgt, M, F)
  if not cfg.decoder_only:
    per_layer += _attention_block(tgt, src, batch * target_length * source_length, M, HD)
  decoder = cfg.num_decoder_layers * per_layer
  logits = 2 * tgt * M * cfg.output_vocab_size
  return StepFlops(encoder=encoder, decoder=decoder, logits=logits)
