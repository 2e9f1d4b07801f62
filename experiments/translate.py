"""Translates lines with a trained run: one output line per input line, in order.

  python -m experiments.translate --workdir=workdirs/default --input=source.txt > out.txt
  echo "5 9 11 4" | python -m experiments.translate --workdir=workdirs/default --beam_size=1
  python -m experiments.translate --workdir=workdirs/default --input=source.txt \
      --attention_map=line1.png   # also: line 1's cross-attention, source x output tokens

Loads the run's config, tokenizer and the latest (or averaged, or a named step's)
checkpoint from the workdir; the logic is `transformer.commands.translate`.
"""

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir.")
flags.DEFINE_string("input", None, "Source text, one sentence per line (plain or .gz); "
                    "default: stdin.")
flags.DEFINE_integer("beam_size", 4, "Beam width (§6.1: 4); 1 is greedy decoding.")
flags.DEFINE_float("alpha", 0.6, "Length penalty exponent (§6.1: 0.6).")
flags.DEFINE_string("checkpoint", "latest", "'latest', 'averaged' or a step number.")
flags.DEFINE_integer("batch_size", 32, "Sentences decoded together.")
flags.DEFINE_string("attention_map", None, "A .png file: draws the decoder cross-attention "
                    "of the first input line (every layer and head), teacher-forced on its "
                    "translation.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from transformer import commands  # noqa: PLC0415  (--help does not pay for importing JAX)
  commands.run_tool(commands.translate, FLAGS.workdir, input_path=FLAGS.input,
                    beam_size=FLAGS.beam_size, alpha=FLAGS.alpha, checkpoint=FLAGS.checkpoint,
                    batch_size=FLAGS.batch_size, attention_map=FLAGS.attention_map)


if __name__ == "__main__":
  app.run(main)
