"""Benchmarks the training step: compile time, step time, tokens/s, model FLOPs, MFU, memory.

  python -m experiments.benchmark --config=experiments/configs/benchmark_base.py --steps=10
  python -m experiments.benchmark --config=experiments/configs/benchmark_base.py:big \
      --config.batch_size=256 --config.model.remat=True
  python -m experiments.benchmark --config=experiments/configs/benchmark_base.py \
      --steps=3 --profile_dir=/tmp/profile  # + a trace of 3 steps, op time by part of the step
  python -m experiments.benchmark --config=experiments/configs/benchmark_base.py:scan \
      --compile_only                            # trace / lower / XLA seconds, one line

The logic (and what MFU is measured against) is in `transformer.benchmark`.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from transformer import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Benchmark config file (with :VARIANT).",
                                lock_config=True)
flags.DEFINE_integer("steps", 10, "Timed training steps (after compilation and warm-up).")
flags.DEFINE_string("profile_dir", None, "Also write a jax.profiler trace of 3 steps here and "
                    "print where their op time goes (transformer.step_profile).")
flags.DEFINE_bool("compile_only", False, "Only trace and compile the step; print the compile "
                  "time by phase (repeat the command to repeat the measurement).")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from transformer import benchmark, settings  # noqa: PLC0415  (flag errors before JAX loads)
  try:
    if FLAGS.compile_only:
      print(f"compile time: {benchmark.compile_report(FLAGS.config)}", flush=True)
      return
    figures = benchmark.run(FLAGS.config, FLAGS.steps, profile_dir=FLAGS.profile_dir)
  except settings.ConfigError as e:
    sys.exit(f"error: {e}")
  print(benchmark.report(figures), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
