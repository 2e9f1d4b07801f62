"""Multi30k En->De with a small Transformer (3+3 layers, d_model 256), sized for a CPU.

  python -m experiments.train --config=experiments/configs/multi30k.py \
      --workdir=workdirs/multi30k --config.data.path=../shared/data/multi30k

The data folder holds {train,val,test_2016_flickr}.{en,de}.gz (line-aligned); its
location is a flag because the data is not part of the repository. A shared
SentencePiece vocabulary of 8000 is trained on the training split and cached.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.num_train_steps = 20_000
  config.batch_size = 32               # packed rows of 64 tokens: ~2k tokens per side
  config.log_every_steps = 50
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.num_eval_batches = 0
  config.decode_examples = 5
  config.bleu_eval_examples = 256      # greedy BLEU on a fixed validation subset per eval
  config.max_checkpoints_to_keep = 5   # the paper averages the last 5 checkpoints

  # TransformerConfig.small: 3+3 layers, d_model 256, 4 heads, d_ff 1024, P_drop 0.1.
  config.model.update(dict(d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=3,
                           num_decoder_layers=3, dropout_rate=0.1, max_len=256))

  config.data = ml_collections.ConfigDict(dict(
      dataset="parallel_text", data_dir="",
      path="",                        # required: e.g. ../shared/data/multi30k
      split_files=dict(train="train", validation="val", test="test_2016_flickr"),
      source_lang="en", target_lang="de",
      tokenizer="sentencepiece", vocab_size=8000, spm_model_type="unigram",
      max_source_length=64, max_target_length=64, pack=True,
      train_split="train", eval_split="validation", test_split="test"))

  config.optim.update(dict(schedule="paper", learning_rate_factor=2.0, warmup_steps=4000,
                           grad_clip_norm=0.0))
  return config
