"""Samples text from a trained language model (a decoder-only run), after a prompt.

  python -m experiments.sample --workdir=workdirs/shakespeare_baby --prompt="ROMEO:" \
      --length=500 --temperature=0.8 --top_k=200 --seed=0

Prints the prompt and its continuation: --length tokens (characters, for a character-level
run) sampled from the latest (or averaged, or a named step's) checkpoint through the cached
decoder, in windows of the run's training context (`transformer.evaluation.sample_ids`).
The same seed gives the same text. The logic is `transformer.commands.sample`.
"""

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A language-model training run's workdir.")
flags.DEFINE_string("prompt", "", "Text the sample continues (forced, then printed first).")
flags.DEFINE_integer("length", 500, "Tokens to sample after the prompt.")
flags.DEFINE_float("temperature", 1.0, "Divides the logits: < 1 sharpens, > 1 flattens.")
flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens only (0: all).")
flags.DEFINE_integer("seed", 0, "The sampling seed: the same seed, the same text.")
flags.DEFINE_string("checkpoint", "latest", "'latest', 'averaged' or a step number.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from transformer import commands  # noqa: PLC0415  (--help does not pay for importing JAX)
  commands.run_tool(commands.sample, FLAGS.workdir, prompt=FLAGS.prompt, length=FLAGS.length,
                    temperature=FLAGS.temperature, top_k=FLAGS.top_k, seed=FLAGS.seed,
                    checkpoint=FLAGS.checkpoint)


if __name__ == "__main__":
  app.run(main)
