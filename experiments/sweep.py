"""A sweep over config keys: every grid point times every seed, then tables and pictures.

  python -m experiments.sweep --config=experiments/configs/dk_study.py:lr \
      --grid=model.attention_scale=inv_sqrt_dk,none,inv_dk,learned,qk_norm \
      --seeds=0,1,2 --workdir=workdirs/scales_dk256
  python -m experiments.sweep --config=experiments/configs/default.py \
      --grid=model.d_ff=128,256 --grid=optim.learning_rate=1e-3,3e-3 --workdir=DIR --dry_run
  python -m experiments.sweep --config=experiments/configs/dk_study.py:mechanism \
      --grid=model.attention_kind+model.attention_scale=dot_product/inv_sqrt_dk,dot_product/none,additive/inv_sqrt_dk \
      --grid=model.head_dim=64,256 --seeds=0,1 --workdir=DIR     # families x d_k
  python -m experiments.sweep ... --launcher=submitit --slurm_partition=gpu --gpus_per_run=1

Ended runs are reused and interrupted ones resumed, so the same command continues a
sweep. Writes DIR/results.md, DIR/results.csv and DIR/*.png (transformer/sweep*.py);
`--tables_only` writes them from the runs that have ended, training nothing (a study that
spans sessions, before its last runs end).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from transformer import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Base experiment config (with :VARIANT).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the sweep (one sub-directory a run).")
flags.DEFINE_multi_string("grid", [], "KEY=V1,V2,...: a config key and its values (None "
                          "unsets a None-able key), or KEY1+KEY2=A1/B1,A2/B2,...: keys varied "
                          "together; repeated, the runs are the product.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, one run each per grid point.")
flags.DEFINE_bool("dry_run", False, "List every run and its state; train nothing.")
flags.DEFINE_bool("tables_only", False, "Tables and pictures of the runs that have ended "
                  "(with their saved scores); train and decode nothing.")
flags.DEFINE_enum("launcher", "local", ["local", "submitit"],
                  "local: each run in turn here; submitit: one job per run (SLURM where "
                  "there is one, else local subprocesses).")
flags.DEFINE_string("metric", "eval_loss", "Final metric of the pivot and the pictures.")
flags.DEFINE_float("target_loss", 1.0,
                   "Training loss whose first crossing is reported as steps_to_target.")
flags.DEFINE_string("score_split", None, "BLEU/chrF of each run on this split, decoded once "
                    "as the run finishes (kept in the run directory and reused).")
flags.DEFINE_integer("score_beam_size", 1, "Beam width of --score_split (1: greedy).",
                     lower_bound=1)
flags.DEFINE_integer("timeout_min", 240, "submitit: minutes a run may take.", lower_bound=1)
flags.DEFINE_integer("gpus_per_run", 0, "submitit: GPUs of each job (0 hides them locally).",
                     lower_bound=0)
flags.DEFINE_integer("cpus_per_run", None, "submitit: CPUs of each job.", lower_bound=1)
flags.DEFINE_float("mem_gb", None, "submitit: memory of each job.", lower_bound=0)
flags.DEFINE_string("slurm_partition", None, "submitit on SLURM: the partition.")
flags.DEFINE_string("slurm_account", None, "submitit on SLURM: the account.")
flags.DEFINE_integer("array_parallelism", 4, "submitit: jobs running at once.", lower_bound=1)
flags.mark_flags_as_required(["config", "workdir"])


def _submitit_options() -> dict:
  return dict(timeout_min=FLAGS.timeout_min, gpus_per_run=FLAGS.gpus_per_run,
              cpus_per_run=FLAGS.cpus_per_run, mem_gb=FLAGS.mem_gb,
              partition=FLAGS.slurm_partition, account=FLAGS.slurm_account,
              array_parallelism=FLAGS.array_parallelism)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Imported here so that --help and flag errors do not pay for importing JAX.
  from transformer import (run_records, sweep, sweep_grid, sweep_plots,  # noqa: PLC0415
                           sweep_tables)
  run_records.quiet_library_logs()
  try:
    sweep_tables.check_metric(FLAGS.metric)
    points = sweep_grid.plan(FLAGS.config, FLAGS.grid, sweep_grid.parse_seeds(FLAGS.seeds))
  except ValueError as e:  # a bad --grid, --seeds or --metric: one line, nothing run
    sys.exit(f"error: {e}")
  try:
    if FLAGS.dry_run:
      print(sweep.describe(points, FLAGS.workdir))
      return
    score = (FLAGS.score_split, FLAGS.score_beam_size) if FLAGS.score_split else None
    if FLAGS.tables_only:
      records = sweep.ended_records(points, FLAGS.workdir, score)
      if not records:
        sys.exit(f"error: --tables_only: no run of this sweep has ended in {FLAGS.workdir}")
      print(f"tables of the {len(records)} of {len(points)} runs that have ended")
    else:
      if FLAGS.score_split:
        sweep.check_score_split(points[0], FLAGS.score_split)
      options = _submitit_options() if FLAGS.launcher == "submitit" else None
      records = sweep.run_sweep(points, FLAGS.workdir, launcher=FLAGS.launcher,
                                submitit_options=options, score=score)
      if FLAGS.score_split:
        records = sweep.score_runs(records, FLAGS.score_split, beam_size=FLAGS.score_beam_size)
  except ValueError as e:  # a run directory of another config, a ConfigError of training
    sys.exit(f"error: {e}")
  except KeyboardInterrupt as e:  # Ctrl-C or a preempted run: nothing lost
    from transformer.train import PREEMPTED_EXIT_CODE  # noqa: PLC0415
    print(f"stopped ({e or 'interrupted'}); the same command resumes the sweep",
          file=sys.stderr, flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)
  rows = sweep_tables.summarize(records, FLAGS.target_loss)
  md, csv_path = sweep_tables.write_tables(rows, records, FLAGS.workdir, FLAGS.target_loss,
                                           FLAGS.metric)
  pictures = sweep_plots.plot_sweep(records, rows, FLAGS.workdir, FLAGS.metric)
  with open(md) as f:
    print(f.read())
  print(f"wrote {md}, {csv_path} and {', '.join(pictures)}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
