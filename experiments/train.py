"""Trains a Transformer: the thin absl entry point; the loop is `transformer.train`.

  python -m experiments.train --config=experiments/configs/default.py --workdir=workdirs/default
  python -m experiments.train --config=experiments/configs/wmt14.py:big --workdir=... \
      --config.num_train_steps=300000

Several hosts: pass --coordinator_address/--num_processes/--process_id to every
process (or --multihost for auto-detection on SLURM / Cloud TPU). Running the same
command again resumes from the workdir's newest good checkpoint. Exit codes: 0 finished,
1 error (one line), 75 preempted by SIGTERM after saving (rerun to resume).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from transformer import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (with :VARIANT).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard events, manifest.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool("multihost", False, "jax.distributed.initialize() with auto-detection.")
flags.DEFINE_string("cpu_collectives", None, "e.g. 'gloo': cross-process collectives on CPU.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Imported here so that --help and flag errors do not pay for importing JAX.
  from transformer import parallel, run_records, settings, train  # noqa: PLC0415
  run_records.quiet_library_logs()
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, auto=FLAGS.multihost,
                                  cpu_collectives=FLAGS.cpu_collectives)
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (settings.ConfigError, train.NonFiniteError) as e:
    sys.exit(f"error: {e}")
  if result.get("preempted"):
    print(f"preempted at step {result['step']} (checkpoint saved); the same command resumes",
          file=sys.stderr, flush=True)
    sys.exit(train.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
