"""Training-step throughput of the Transformer-base shape (and variants) on synthetic batches.

  python -m experiments.benchmark --config=experiments/configs/benchmark_base.py --steps=10
  python -m experiments.benchmark --config=experiments/configs/benchmark_base.py:scan
  python -m experiments.benchmark --config=experiments/configs/benchmark_base.py:big \
      --config.batch_size=256                       # GPU: bf16 compute, cuDNN attention
  python -m experiments.benchmark --config=experiments/configs/benchmark_base.py:tiny --steps=2

Variants:
  base  d_model 512, 6+6 layers, 8 heads, d_ff 2048, shared vocabulary 8,000, batch 16,
        source and target length 64, float32, dropout 0.1 (the CPU target).
  scan  base with nn.scan over the layers (one block compiled per stack: fast compilation).
  big   Transformer-big (d_model 1024, 16 heads, d_ff 4096, dropout 0.3), length 256,
        bfloat16 compute with float32 parameters and optimizer state, cuDNN attention.
  tiny  a 2+2-layer d_model 64 model, length 16 (tests).
Every key below can be overridden, e.g. --config.model.remat=True.
"""

import ml_collections

from experiments.configs import default


def get_config(variant: str = "base") -> ml_collections.ConfigDict:
  variants = ("base", "scan", "big", "tiny")
  if variant not in variants:
    raise ValueError(f"unknown benchmark variant {variant!r}; valid: {', '.join(variants)}")
  config = default.get_config()      # the training experiment's keys, same checks
  config.batch_size = 16             # global rows per step, over all devices
  config.num_train_steps = 100_000   # only shapes the learning-rate schedule
  config.optim.warmup_steps = 4000   # §5.3
  # Transformer-base (Table 3) over TransformerConfig's defaults: float32, the reference
  # attention, a layer loop, no remat; a fixed vocabulary as the benchmark has no tokenizer.
  config.model.update(vocab_size=8000, d_model=512, num_heads=8, d_ff=2048,
                      num_encoder_layers=6, num_decoder_layers=6, dropout_rate=0.1, max_len=512)
  config.parallel.backend = "shard_map"  # jit(shard_map): on one device, plain jit
  config.benchmark = ml_collections.ConfigDict(dict(
      source_length=64,                # tokens per source row (all real: no padding)
      target_length=64,
      warmup_steps=2,                  # untimed steps after compilation
      matmul_size=2048,                # the ceiling's square matmul (CPU: float32)
      matmul_repeats=10))              # median of these, sampled between the timed steps

  if variant == "scan":
    config.model.scan_layers = True
  elif variant == "big":
    config.model.update(d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3,
                        dtype="bfloat16", attention_implementation="cudnn", scan_layers=True)
    config.batch_size = 128            # fits an H100 (80 GB) without remat
    config.benchmark.update(source_length=256, target_length=256, matmul_size=8192,
                            matmul_repeats=20)
  elif variant == "tiny":
    config.model.update(vocab_size=64, d_model=64, num_heads=4, d_ff=128, num_encoder_layers=2,
                        num_decoder_layers=2, max_len=128)
    config.batch_size = 8
    config.benchmark.update(source_length=16, target_length=16, warmup_steps=1,
                            matmul_size=256, matmul_repeats=4)
  return config
