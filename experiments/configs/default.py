"""The default experiment: a tiny Transformer learns to copy digit strings, on a CPU.

  python -m experiments.train --config=experiments/configs/default.py --workdir=workdirs/default

(`make train` runs exactly this.) It reaches >= 99% greedy-decoded sequence exact
match on the test split in a few minutes on two CPU cores, then prints a few
greedy outputs beside their targets. Every other config starts from this one.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0                      # parameters, dropout keys and data order
  config.num_train_steps = 600         # train_step calls (micro-batches under accumulation)
  config.batch_size = 64               # global rows (examples) per step, over all devices
  config.label_smoothing = 0.1         # epsilon_ls, §5.4
  config.log_every_steps = 50          # metrics.jsonl / TensorBoard / progress line
  config.eval_every_steps = 200        # teacher-forced metrics on data.eval_split
  config.checkpoint_every_steps = 200  # also at the end and on SIGTERM
  config.max_checkpoints_to_keep = 3
  config.async_checkpointing = True
  config.num_eval_batches = 0          # 0: the whole eval split
  config.decode_at_end = True          # greedy exact match on data.test_split
  config.decode_examples = 3           # printed beside their targets
  config.attention_diagnostics = True  # attention statistics of a probe batch at each eval
  config.bleu_eval_examples = 0        # >0: greedy BLEU/chrF on this many eval examples
  config.dropout_rng = "hash"          # dropout keys: a counter hash ('threefry': JAX's own,
                                       # slower to compile on CPU); transformer/rng.py

  # TransformerConfig fields (transformer/config.py); vocab_size 0 = the tokenizer's.
  config.model = ml_collections.ConfigDict(dict(
      vocab_size=0, d_model=64, num_heads=4, d_ff=128, num_encoder_layers=2,
      num_decoder_layers=2, dropout_rate=0.0, attention_dropout_rate=0.0,
      ffn_dropout_rate=0.0, norm_position="post", attention_scale="inv_sqrt_dk",
      positional_encoding="sinusoidal", share_embeddings=True, max_len=128,
      dtype="float32", param_dtype="float32",
      attention_bias=False,  # W^Q, W^K, W^V, W^O without biases, as §3.2.2 writes them
      custom_vjp=True))  # written-out LayerNorm and softmax backward: less to compile

  # DataConfig fields (transformer/data/config.py).
  config.data = ml_collections.ConfigDict(dict(
      dataset="synthetic_seq2seq/copy", data_dir="", synthetic_train_examples=20_000,
      synthetic_eval_examples=500, synthetic_min_length=4, synthetic_max_length=16,
      tokenizer="auto", max_source_length=24, max_target_length=24, pack=False,
      train_split="train", eval_split="validation", test_split="test"))

  # OptimConfig fields (transformer/optim.py): Adam(0.9, 0.98, 1e-9) as in §5.3; a cosine
  # decay to 0 (not the paper schedule) makes the last steps settle the exact match.
  config.optim = ml_collections.ConfigDict(dict(
      schedule="warmup_cosine", learning_rate=5e-3, learning_rate_factor=1.0,
      warmup_steps=100, decay_steps=0, end_learning_rate=0.0, b1=0.9, b2=0.98, eps=1e-9,
      weight_decay=0.0, grad_clip_norm=1.0, grad_accum_steps=1,
      flat_moments=True))  # Adam's moments as one vector each: less to compile

  config.parallel = ml_collections.ConfigDict(dict(
      backend="pmap"))                 # or 'shard_map': the same numbers
  return config
