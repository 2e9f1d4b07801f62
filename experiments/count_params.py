"""Prints the parameter count of each model preset (no weights are allocated).

  python -m experiments.count_params                # every preset, its own vocabulary
  python -m experiments.count_params --preset=base --vocab_size=32000
  python -m experiments.count_params --preset=ViT-B/16   # 224 x 224, 1,000 classes
"""

from absl import app, flags

from transformer import vit
from transformer.config import PRESETS, preset
from transformer.params import count_parameters

_PRESET = flags.DEFINE_enum("preset", None, list(PRESETS) + list(vit.VIT_PRESETS),
                            "One preset (default: all).")
_VOCAB = flags.DEFINE_integer("vocab_size", None,
                              "Shared vocabulary size (default: the preset's; 37,000 for base/big).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _VOCAB.value is not None and _VOCAB.value <= 0:
    raise app.UsageError(f"--vocab_size={_VOCAB.value} must be positive")
  overrides = {} if _VOCAB.value is None else {"vocab_size": _VOCAB.value}
  names = [_PRESET.value] if _PRESET.value else [*PRESETS, *vit.VIT_PRESETS]
  for name in (n for n in names if n in vit.VIT_PRESETS):
    cfg, vision = vit.vit_preset(name)
    print(f"{name:9s} image={vision.image_size} patch={vision.patch_size} "
          f"classes={vision.num_classes} d_model={cfg.d_model} heads={cfg.num_heads} "
          f"d_ff={cfg.d_ff} layers={cfg.num_encoder_layers}  "
          f"parameters={vit.count_parameters(cfg, vision):,}")
  for name in (n for n in names if n in PRESETS):
    cfg = preset(name, **overrides)
    print(f"{name:6s} vocab={cfg.vocab_size:6d} d_model={cfg.d_model:5d} heads={cfg.num_heads:3d} d_ff={cfg.d_ff:5d} "
          f"layers={cfg.num_encoder_layers}+{cfg.num_decoder_layers}  "
          f"parameters={count_parameters(cfg):,}")


if __name__ == "__main__":
  app.run(main)
