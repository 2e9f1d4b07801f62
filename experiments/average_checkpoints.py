"""Averages the params of a run's last N checkpoints (§6.1: the last 5 for base models).

  python -m experiments.average_checkpoints --workdir=workdirs/default --last=5
  python -m experiments.translate --workdir=workdirs/default --checkpoint=averaged

Writes WORKDIR/averaged/STEP (STEP = the newest step averaged); checkpoints/ is only
read. The logic is `transformer.averaging`.
"""

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir.")
flags.DEFINE_integer("last", 5, "How many of the newest checkpoints to average.")
flags.DEFINE_bool("overwrite", False, "Replace an average of other steps at the same step.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from transformer import commands  # noqa: PLC0415  (--help does not pay for importing JAX)
  commands.run_tool(commands.average, FLAGS.workdir, FLAGS.last, overwrite=FLAGS.overwrite)


if __name__ == "__main__":
  app.run(main)
