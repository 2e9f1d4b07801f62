"""The shipped attention-scale study: does 1/sqrt(d_k) matter, and when? (§3.2.1)

  python -m experiments.sweep --config=experiments/configs/scale_ablation.py:large_dk \
      --grid=model.attention_scale=inv_sqrt_dk,none,inv_dk,learned,qk_norm --seeds=0,1,2 \
      --workdir=workdirs/ablate_large
  python -m experiments.sweep --config=experiments/configs/scale_ablation.py:small_dk \
      --grid=model.attention_scale=inv_sqrt_dk,none,inv_dk,learned,qk_norm --seeds=0,1,2 \
      --workdir=workdirs/ablate_small

Variants (same width d_model 256, same task, same steps; only the head split differs):
  large_dk  one head, d_k = 256 (row A of Table 3 with h = 1): unscaled logits have
            standard deviation ~16 at initialisation, so the softmax saturates
  small_dk  16 heads, d_k = 16: unscaled logits have standard deviation ~4
The task is reversing digit strings (synthetic_seq2seq/reverse), which needs sharp,
position-dependent attention. Each run takes about a minute on two CPU cores.
"""

from experiments.configs import default

VARIANTS = {"large_dk": 1, "small_dk": 16}  # variant -> num_heads at d_model 256


def get_config(variant: str = "large_dk"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  config = default.get_config()
  config.num_train_steps = 400
  config.batch_size = 32
  config.log_every_steps = 20
  config.eval_every_steps = 50          # each evaluation also logs the attention diagnostics
  config.checkpoint_every_steps = 200
  config.num_eval_batches = 2
  config.decode_examples = 0
  config.model.d_model = 256
  config.model.num_heads = VARIANTS[variant]
  config.model.d_ff = 256
  config.model.num_encoder_layers = 1
  config.model.num_decoder_layers = 1
  config.data.dataset = "synthetic_seq2seq/reverse"
  config.data.synthetic_train_examples = 20_000
  config.data.synthetic_eval_examples = 256
  config.data.synthetic_min_length = 4
  config.data.synthetic_max_length = 12
  config.data.max_source_length = 16
  config.data.max_target_length = 16
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 50
  return config
