"""A Vision Transformer classifies scikit-learn's 8 x 8 handwritten digits, on a CPU.

  python -m experiments.train --config=experiments/configs/vit_digits.py \
      --workdir=workdirs/vit_digits
  python -m experiments.evaluate --workdir=workdirs/vit_digits --split=test   # top-1 accuracy
  python -m experiments.sweep --config=experiments/configs/vit_digits.py \
      --grid=model.attention_scale=inv_sqrt_dk,none,qk_norm --seeds=0,1 \
      --workdir=workdirs/vit_digits_scale --metric=eval_accuracy

The model is `transformer.vit.VisionTransformer`: 2 x 2 patches (16 of them) and a [CLS]
token through the project's encoder stack, so every `model.*` attention knob (kind, scale
policy, head_dim, pre/post-LN) applies. The data is the project's `sklearn_digits` TFDS
builder (1,797 images shipped with scikit-learn, no download), fixed seeded splits: 1,257
train, 180 validation, 360 test. The periodic evaluation reads validation, and every
setting here was chosen on it; the test split is scored once, at the end. Other image
sets by name (they download): `--config.data.dataset=mnist --config.vision.patch_size=4`,
`cifar10` with `--config.data.image_flip=True --config.data.image_crop_padding=4`.
"""

import ml_collections

from transformer import settings


def get_config() -> ml_collections.ConfigDict:
  config = settings.default_config()
  config.num_train_steps = 3000        # ~150 epochs of 1,257 images at batch 64
  config.batch_size = 64
  config.eval_every_steps = 250        # 180 validation images: a cheap curve
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 250

  # The common ViT layout (pre-LN, GELU, biases in every projection, learned positions)
  # at the scale of the data: 4 layers of d_model 64, 4 heads of d_k 16 (136,138 parameters).
  # Dropout 0.1, chosen on validation at 3,000 steps (two runs, seed 0): dropout 0 fits train
  # (100% from step 2,500) and ends at 95.6% validation (172/180, best 96.7%, nll 0.204);
  # dropout 0.1 ends at 97.2% (175/180, nll 0.173) with train at 98.7%. Three images of 180
  # is a small margin (one seed); 3,000 steps, under 4 minutes on two shared CPU cores, keep
  # the run within the five.
  config.model.update(d_model=64, num_heads=4, d_ff=128, num_encoder_layers=4,
                      norm_position="pre", activation="gelu", attention_bias=True,
                      positional_encoding="learned", dropout_rate=0.1)

  # image_size, num_channels and num_classes 0: the dataset's (8, 1 and 10 for digits).
  config.vision = settings.vision_defaults()
  config.vision.update(image_size=0, num_channels=0, num_classes=0, patch_size=2, pooling="cls")

  # A random crop of the image padded by one pixel; no flips (a flipped digit is another
  # shape). Evaluation on validation (the default, stated: the choices above were made on
  # it); data.test_split is scored once, after the last step.
  config.data.update(dataset="sklearn_digits", image_crop_padding=1, eval_split="validation")

  # AdamW with a short warmup and a cosine decay, as ViTs are trained (not Eq. 3).
  config.optim.update(schedule="warmup_cosine", learning_rate=2e-3, warmup_steps=200,
                      b2=0.999, eps=1e-8, weight_decay=0.05, grad_clip_norm=1.0)
  return config
