"""The default experiment: a tiny Transformer learns to copy digit strings, on a CPU.

  python -m experiments.train --config=experiments/configs/default.py --workdir=workdirs/default

(`make train` runs exactly this.) It reaches >= 99% greedy-decoded sequence exact
match on the test split in a few minutes on two CPU cores, then prints a few
greedy outputs beside their targets. Every other config starts from this one.

Every key exists at its default (`transformer.settings.default_config()`: the
dataclasses of transformer/settings.py, config.py, optim.py and data/config.py), so
any of them can be overridden with --config.KEY=VALUE; this file states only what
differs from those defaults, and why.
"""

import ml_collections

from transformer import settings


def get_config() -> ml_collections.ConfigDict:
  config = settings.default_config()
  config.num_train_steps = 600         # enough for >= 99% exact match on the copy task
  config.eval_every_steps = 200        # three evaluations in a short run
  config.checkpoint_every_steps = 200

  # A 2+2-layer, d_model 64 model (TransformerConfig.tiny): the task is easy and the
  # machine a laptop; vocab_size 0 takes the tokenizer's (32 symbols of the task).
  config.model.update(d_model=64, num_heads=4, d_ff=128, num_encoder_layers=2,
                      num_decoder_layers=2, dropout_rate=0.0, max_len=128)

  # 20,000 copy examples of 4-16 symbols; rows of 24 tokens hold the longest with EOS.
  # No packing: each row is one example, so the test split's exact match counts examples.
  config.data.update(synthetic_train_examples=20_000, max_source_length=24,
                     max_target_length=24, pack=False)

  # Adam(0.9, 0.98, 1e-9) as in §5.3, but a cosine decay to 0 after a short warmup (not
  # Eq. 3's 4,000 warmup steps, longer than the run): the last steps settle the exact match.
  config.optim.update(schedule="warmup_cosine", learning_rate=5e-3, warmup_steps=100,
                      grad_clip_norm=1.0)
  return config
