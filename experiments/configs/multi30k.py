"""Multi30k En->De with a small Transformer (3+3 layers, d_model 256), sized for a CPU.

  python -m experiments.train --config=experiments/configs/multi30k.py \
      --workdir=workdirs/multi30k --config.data.path=../shared/data/multi30k

The data folder holds {train,val,test_2016_flickr}.{en,de}.gz (line-aligned); its
location is a flag because the data is not part of the repository. A shared
SentencePiece vocabulary of 8000 is trained on the training split and cached.

Recorded on today's code paths at commit e15047c (BUILD_NOTES.md, "Multi30k
time-to-quality"): 1,900 steps, 1.83e14 model FLOPs; then `python -m experiments.evaluate
--workdir=DIR --split=test` (beam 4, alpha 0.6, last checkpoint) gave sacreBLEU 36.03,
chrF 59.46 on test_2016_flickr, En->De (36.27 at 59ff46e, with the paths of that time).
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  # Sized for 60 minutes on a 2-core CPU (~1.7 s per step): ~2,000 updates, ~8 epochs.
  config.num_train_steps = 1900
  config.batch_size = 32               # packed rows of 64 tokens: ~2k tokens per side
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
  config.decode_at_end = False         # exact match means nothing here; BLEU is evaluate's job
  config.decode_examples = 5
  config.bleu_eval_examples = 256      # greedy BLEU on a fixed validation subset per eval
  config.max_checkpoints_to_keep = 5   # the paper averages the last 5 checkpoints

  # TransformerConfig.small: 3+3 layers, d_model 256, 4 heads, d_ff 1024, P_drop 0.1.
  config.model.update(dict(d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=3,
                           num_decoder_layers=3, dropout_rate=0.1, max_len=256))

  config.data.update(dict(
      dataset="parallel_text",
      path="",                        # required: e.g. ../shared/data/multi30k
      split_files=dict(train="train", validation="val", test="test_2016_flickr"),
      tokenizer="sentencepiece", vocab_size=8000,  # one vocabulary for both languages
      max_source_length=64, max_target_length=64, pack=True))

  # A short budget: a short warmup and a cosine decay to zero at the last step (Eq. 3's
  # 4,000 warmup steps would take the whole hour).
  config.optim.update(dict(schedule="warmup_cosine", learning_rate=1.5e-3, warmup_steps=250,
                           end_learning_rate=0.0, grad_clip_norm=1.0))
  return config
