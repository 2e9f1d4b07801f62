"""The attention-scale ablation: every (policy, seed) run, then a table and pictures.

  python -m experiments.ablate_scale --config=experiments/configs/scale_ablation.py:large_dk \
      --scales=inv_sqrt_dk,none,inv_dk,learned,qk_norm --seeds=0,1,2 --workdir=workdirs/ablate

Finished runs are reused and interrupted ones resumed, so the same command continues a
sweep. Writes DIR/results.md, DIR/results.csv and DIR/*.png (transformer/sweep.py).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from transformer import cli, sweep, sweep_plots

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base experiment config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the sweep (one sub-directory a run).")
_SCALES = flags.DEFINE_list("scales", ["inv_sqrt_dk", "none", "inv_dk", "learned", "qk_norm"],
                            "Attention scale policies (transformer/attention.py).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, one run each per policy.")
_TARGET = flags.DEFINE_float("target_loss", 1.0,
                             "Training loss whose first crossing is reported as steps_to_target.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    raise app.UsageError(f"--seeds must be integers, got {','.join(_SEEDS.value)}") from None
  try:
    sweep.check_sweep_args(_SCALES.value, seeds)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  records = sweep.run_sweep(_CONFIG.value, _WORKDIR.value, _SCALES.value, seeds)
  rows = sweep.summarize(records, _TARGET.value)
  md, csv_path = sweep.write_tables(rows, records, _WORKDIR.value, _TARGET.value)
  pictures = sweep_plots.plot_sweep(records, _WORKDIR.value)
  with open(md) as f:
    print(f.read())
  logging.info("wrote %s, %s and %s", md, csv_path, ", ".join(pictures))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
