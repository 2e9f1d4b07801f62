"""BLEU, chrF (sacreBLEU, with signatures) and perplexity of a trained run.

  python -m experiments.evaluate --workdir=workdirs/default --split=test
  python -m experiments.evaluate --workdir=DIR --source=test.en --reference=test.de \
      --checkpoint=averaged --output=hypotheses.de

Hypotheses are detokenized and scored against the raw reference text. The logic is
`transformer.commands.evaluate`.
"""

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir.")
flags.DEFINE_string("split", None, "A split of the run's dataset, e.g. test or validation.")
flags.DEFINE_string("source", None, "Source sentences, one per line (instead of --split).")
flags.DEFINE_string("reference", None, "Reference translations, line-aligned with --source.")
flags.DEFINE_integer("beam_size", 4, "Beam width (§6.1: 4); 1 is greedy decoding.")
flags.DEFINE_float("alpha", 0.6, "Length penalty exponent (§6.1: 0.6).")
flags.DEFINE_string("checkpoint", "latest", "'latest', 'averaged' or a step number.")
flags.DEFINE_integer("batch_size", 32, "Sentences decoded together.")
flags.DEFINE_integer("limit", 0, "Only the first N lines (0: all).")
flags.DEFINE_string("output", None, "Write the hypotheses here, one per line.")
flags.DEFINE_bool("perplexity", True, "Also the teacher-forced perplexity of the references.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from transformer import commands  # noqa: PLC0415  (--help does not pay for importing JAX)
  commands.run_tool(commands.evaluate, FLAGS.workdir, split=FLAGS.split, source=FLAGS.source,
                    reference=FLAGS.reference, beam_size=FLAGS.beam_size, alpha=FLAGS.alpha,
                    checkpoint=FLAGS.checkpoint, batch_size=FLAGS.batch_size,
                    limit=FLAGS.limit, output=FLAGS.output, perplexity=FLAGS.perplexity)


if __name__ == "__main__":
  app.run(main)
