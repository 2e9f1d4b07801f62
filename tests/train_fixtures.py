"""Shared pieces of the training tests: a tiny model, hand-made copy batches, a loop config.

Imported by tests/test_train_*.py and by tests/train_subprocess.py (fresh processes).
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections
import numpy as np

from transformer import optim, parallel, run_records, step as step_lib
from transformer.config import TransformerConfig
from transformer.model import Transformer

VOCAB = 32


def copy_batch(rs: np.random.RandomState, rows: int, length: int = 12) -> dict[str, np.ndarray]:
  """A copy task: targets = inputs = random tokens then EOS, padded with 0."""
  inputs = np.zeros((rows, length), np.int32)
  for i in range(rows):
    n = rs.randint(3, length)
    inputs[i, :n] = rs.randint(3, VOCAB, size=n)
    inputs[i, n] = 2
  return {"inputs": inputs, "targets": inputs.copy()}


@functools.lru_cache(maxsize=None)
def tiny_setup(dropout_rate: float = 0.0, lr: float = 3e-3, grad_accum_steps: int = 1,
               seed: int = 0):
  """(model, tx, train_step, initial TrainState) for the tiny config (1+1 layers: compiles fast).

  Cached, so that tests reusing a setup reuse its compiled step too.
  """
  cfg = TransformerConfig.tiny(vocab_size=VOCAB, dropout_rate=dropout_rate,
                               num_encoder_layers=1, num_decoder_layers=1)
  model = Transformer(cfg)
  ocfg = optim.OptimConfig(schedule="warmup_rsqrt", learning_rate=lr, warmup_steps=5,
                           grad_clip_norm=1.0, grad_accum_steps=grad_accum_steps)
  tx, schedule = optim.make_optimizer(ocfg, cfg.d_model, 100)
  state = step_lib.init_state(model, tx, jax.random.key(seed), source_length=12,
                              target_length=12)
  train_step = step_lib.make_train_step(
      model, tx, lambda s: optim.learning_rate_at(schedule, ocfg, s), label_smoothing=0.1)
  return model, tx, train_step, state


def run_fixed_steps(backend: str, steps: int, *, process_index: int = 0, process_count: int = 1,
                    devices=None, global_batch: int = 8, dropout_rate: float = 0.0):
  """Per-step losses of `steps` steps on fixed global batches; each process feeds its rows."""
  _, _, train_step, state = tiny_setup(dropout_rate=dropout_rate)
  dp = parallel.DataParallel(backend, devices=devices)
  p_step = dp.map_train_step(train_step)
  state = dp.put_replicated(state)
  rng = jax.random.key_data(jax.random.key(1))
  rs = np.random.RandomState(42)
  rows = global_batch // process_count
  out = []
  for _ in range(steps):
    batch = copy_batch(rs, global_batch)
    local = {k: v[process_index * rows:(process_index + 1) * rows] for k, v in batch.items()}
    state, metrics = p_step(state, dp.put_batch(local), rng)
    m = dp.fetch(metrics)
    out.append(float(m["loss_sum"] / m["token_count"]))
  return out


def loop_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """A seconds-long run of the real loop on the synthetic copy task (4 devices)."""
  config = ml_collections.ConfigDict(dict(
      seed=0, num_train_steps=6, batch_size=8, label_smoothing=0.1, log_every_steps=1,
      eval_every_steps=3, checkpoint_every_steps=2, max_checkpoints_to_keep=5,
      async_checkpointing=True, num_eval_batches=1, decode_at_end=False, decode_examples=0,
      model=dict(vocab_size=0, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1,
                 num_decoder_layers=1, dropout_rate=0.1, max_len=64),
      data=dict(dataset="synthetic_seq2seq/copy", data_dir=data_dir,
                synthetic_train_examples=256, synthetic_eval_examples=16,
                synthetic_min_length=3, synthetic_max_length=8, max_source_length=12,
                max_target_length=12, pack=False),
      optim=dict(schedule="warmup_rsqrt", learning_rate=3e-3, warmup_steps=2),
      parallel=dict(backend="pmap")))
  return set_keys(config, overrides)


def hooked_train_iterator(original, hook):
  """`data.train_iterator` whose iterators call hook(n) before they draw batch n (from 1).
  The iterator keeps its Grain class underneath, so it still checkpoints as one."""
  def wrapped(*args, **kwargs):
    it = original(*args, **kwargs)
    base = type(it)

    class Hooked(base):
      def __next__(self):
        self._hooked_count = getattr(self, "_hooked_count", 0) + 1
        hook(self._hooked_count)
        return base.__next__(self)

    it.__class__ = Hooked
    return it
  return wrapped


def set_keys(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """config with {'section.key': value} overrides applied (in place)."""
  for key, value in overrides.items():
    target = config
    *parents, last = key.split(".")
    for p in parents:
      target = target[p]
    target[last] = value
  return config


def checkpoint_params(workdir: str, step: int) -> dict[str, np.ndarray]:
  """The saved training state of `step`, as {path: array}, read onto one device (whatever
  the number of processes and devices that wrote it)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415  (only the loop tests need it)
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             options=ocp.CheckpointManagerOptions(read_only=True),
                             item_handlers={"state": ocp.StandardCheckpointHandler()}) as mngr:
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                          mngr.item_metadata(step)["state"])
    tree = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]
  return {"/".join(map(str, path)): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].tobytes() == b[key].tobytes(), key


def run_metrics(workdir: str) -> list[dict]:
  """metrics.jsonl without the timing records (they differ from run to run)."""
  return [r for r in run_records.read_metrics(workdir) if r["split"] != "perf"]
