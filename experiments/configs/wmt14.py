"""WMT 2014 En->De with the paper's Transformer base or big (Table 3), for accelerators.

  python -m experiments.train --config=experiments/configs/wmt14.py:base --workdir=workdirs/wmt14_base
  python -m experiments.train --config=experiments/configs/wmt14.py:big --workdir=workdirs/wmt14_big

Paper settings (§5): shared BPE vocabulary of ~37000 tokens (§5.1), batches of about
25000 source and 25000 target tokens (§5.1), Adam(0.9, 0.98, 1e-9) with the Eq. 3
schedule and 4000 warmup steps (§5.3), P_drop 0.1 (base) / 0.3 (big) and label
smoothing 0.1 (§5.4), 100k (base) / 300k (big) steps (§5.2). The data is the TFDS
catalog's `wmt14_translate/de-en` (preparing it needs TensorFlow: BUILD_NOTES.md). Like
every experiment config, the attention projections have no biases (§3.2.2 writes them as
matrices; base then has 63,045,632 parameters with the shared 37,000-token vocabulary).
On several hosts add --coordinator_address/--num_processes/--process_id or --multihost.
"""

import ml_collections

from experiments.configs import default

VARIANTS = {
    # d_model, num_heads, d_ff, P_drop, train steps (Table 3)
    "base": dict(d_model=512, num_heads=8, d_ff=2048, dropout_rate=0.1, steps=100_000),
    "big": dict(d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3, steps=300_000),
}


def get_config(variant: str = "base") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown wmt14 variant {variant!r}; valid: {', '.join(VARIANTS)}")
  v = VARIANTS[variant]
  config = default.get_config()
  config.num_train_steps = v["steps"]
  config.batch_size = 96               # packed rows of 256: ~25k tokens per side (§5.1)
  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 2000
  config.max_checkpoints_to_keep = 5
  config.decode_examples = 5

  config.model.update(dict(d_model=v["d_model"], num_heads=v["num_heads"], d_ff=v["d_ff"],
                           num_encoder_layers=6, num_decoder_layers=6,
                           dropout_rate=v["dropout_rate"], share_embeddings=True, max_len=512,
                           dtype="bfloat16", param_dtype="float32"))

  config.data.update(dict(
      dataset="wmt14_translate/de-en", tokenizer="sentencepiece", vocab_size=37000,
      spm_model_type="bpe", max_source_length=256, max_target_length=256, pack=True))

  # The paper's Eq. 3 schedule (OptimConfig's defaults) instead of default.py's cosine.
  config.optim.update(dict(schedule="paper", warmup_steps=4000, grad_clip_norm=0.0))
  return config
