"""The training loop: `train_and_evaluate(config, workdir)`.

Order of business: check the config and the workdir (one-line errors, nothing
written), build the tokenizer and model, restore the newest good checkpoint or
initialise, then train with periodic logging, evaluation and checkpoints. SIGTERM
(preemption) saves a checkpoint and returns cleanly; a non-finite loss or gradient
stops with an error naming the step and leaves the last good checkpoint alone.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from transformer import (checkpoint, data, diagnostics, losses, optim, parallel, run_records,
                         settings)
from transformer import step as step_lib
from transformer.model import Transformer

_MODEL_KEYS = ("inputs", "targets", "inputs_segmentation", "targets_segmentation",
               "inputs_position", "targets_position", "valid")


class NonFiniteError(FloatingPointError):
  """The loss or the gradients stopped being finite."""


class _Preemption:
  """Turns SIGTERM into a flag the loop polls, so it can save first and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint, then exiting")
    self.requested = True

  def agreed(self) -> bool:
    """All processes stop at the same step if any was told to."""
    if jax.process_count() == 1:
      return self.requested
    return bool(multihost_utils.process_allgather(np.int32(self.requested)).max())

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _model_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: v for k, v in batch.items() if k in _MODEL_KEYS}


def _sum_metrics(host_metrics: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Sums over steps; per-step values (learning rate, grad norm) are averaged."""
  out = {k: float(sum(m[k] for m in host_metrics)) for k in host_metrics[0]}
  for k in ("learning_rate", "grad_norm"):
    out[k] /= len(host_metrics)
  out.pop("nonfinite")
  return out


def _eval_batches(run: dict[str, Any], split: str) -> list[dict[str, np.ndarray]]:
  """This process's padded batches of a split, prepared once per run."""
  if split not in run["eval_cache"]:
    run["eval_cache"][split] = data.eval_batches(
        run["data_cfg"], run["tokenizer"], split, batch_size=run["local_batch"],
        process_index=jax.process_index(), process_count=jax.process_count())
  return run["eval_cache"][split]


def evaluate(run: dict[str, Any], params: Any, split: str, limit: int = 0) -> dict[str, float]:
  """Teacher-forced metrics of a split (exact_match here is teacher-forced too)."""
  batches = _eval_batches(run, split)
  total: dict[str, float] = {}
  for batch in batches[:limit or None]:
    sums = run["dp"].fetch(run["eval_step"](params, run["dp"].put_batch(_model_batch(batch))))
    for k, v in sums.items():
      total[k] = total.get(k, 0.0) + float(v)
  return losses.summarize(total)


def decode_split(run: dict[str, Any], params: Any, split: str) -> tuple[dict[str, float], list]:
  """Greedy decoding (transformer.decoding) of this process's rows: sequence exact match."""
  from transformer import decoding  # noqa: PLC0415  (only needed at the end)
  model, tokenizer = run["model"], run["tokenizer"]
  host_params = run["dp"].fetch(params)
  exact = count = 0
  examples = []
  for batch in _eval_batches(run, split):
    length = batch["targets"].shape[1]
    fn = run["decoders"].setdefault(length, jax.jit(functools.partial(
        decoding.greedy_decode, model, max_length=length)))
    out = np.asarray(fn(host_params, batch["inputs"]))
    for row in np.flatnonzero(batch["valid"]):
      target = batch["targets"][row][batch["targets_segmentation"][row] != 0]
      pred = out[row][:len(target)]
      exact += int(np.array_equal(pred, target))
      count += 1
      if len(examples) < run["settings"].decode_examples:
        examples.append((tokenizer.decode(batch["inputs"][row][batch["inputs"][row] != 0]),
                         tokenizer.decode(target), tokenizer.decode(pred)))
  if jax.process_count() > 1:
    exact, count = multihost_utils.process_allgather(np.array([exact, count])).sum(0)
  return {"greedy_exact_match": exact / max(count, 1), "decoded": float(count)}, examples


def _log_attention(run: dict[str, Any], params: Any, writer, step: int, workdir: str) -> None:
  """Attention diagnostics of a fixed probe batch (the eval split's first rows).

  Logged under split 'attention', at step 0 too (the initialisation, where §3.2.1's
  argument about the logit variance applies); the first probe example's maps are saved to
  WORKDIR/attention_probe.npz (overwritten at each evaluation; the sweep plots the last).
  """
  if "probe" not in run:
    first = _eval_batches(run, run["data_cfg"].eval_split)[0]
    run["probe"] = diagnostics.Probe(run["model"], first)
  stats, maps = run["probe"](run["dp"].fetch(params))
  writer.write(step, "attention", stats)
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, "attention_probe.tmp.npz")
    np.savez(tmp, **maps)
    os.replace(tmp, os.path.join(workdir, "attention_probe.npz"))


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds this run); returns the final metrics."""
  cfg, data_cfg, optim_cfg, backend = settings.resolve(config)
  identity = settings.run_identity(config)
  settings.check_workdir(workdir, identity)
  local_batch = cfg.batch_size // jax.process_count()

  try:  # e.g. an unknown dataset name or a missing data path: still before any writing
    tokenizer = data.build_tokenizer(data_cfg)
  except ValueError as e:
    raise settings.ConfigError(f"data.dataset={data_cfg.dataset!r}: "
                               f"{str(e).splitlines()[0]}") from e
  model_cfg = settings.model_config(cfg, tokenizer.vocab_size)
  model = Transformer(model_cfg)
  tx, schedule = optim.make_optimizer(optim_cfg, model_cfg.d_model, cfg.num_train_steps)
  lr_fn = lambda s: optim.learning_rate_at(schedule, optim_cfg, s)  # noqa: E731
  dp = parallel.DataParallel(backend)
  train_iter = data.train_iterator(data_cfg, tokenizer, batch_size=local_batch, seed=cfg.seed,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  settings.record_identity(workdir, identity)

  init_key, dropout_key = jax.random.split(jax.random.key(cfg.seed))
  # Parameter shapes do not depend on the sequence length: one short row initialises.
  first = {"targets": np.ones((1, data_cfg.max_target_length), np.int32)}
  if not data_cfg.decoder_only:
    first["inputs"] = np.ones((1, data_cfg.max_source_length), np.int32)

  def init_state():
    params = model.init(init_key, first.get("inputs"), first["targets"])["params"]
    return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params))

  abstract = jax.eval_shape(init_state)
  rng = jax.random.key_data(dropout_key)
  abstract_global = {"train": dp.abstract_global(abstract),
                     "rng": jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=dp.replicated)}
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=cfg.max_checkpoints_to_keep,
                                 async_save=cfg.async_checkpointing)
  restored = ckpt.restore_latest(abstract_global, train_iter)
  if restored:
    start_step, state, rng, _ = restored
    logging.info("resumed from the checkpoint at step %d", start_step)
    state = dp.put_replicated(state)
    rng = np.asarray(checkpoint.host_copy(rng))
  else:
    start_step = 0
    state = dp.put_replicated(jax.jit(init_state)())
    rng = np.asarray(rng)
  state_count = sum(x.size for x in jax.tree.leaves(abstract.params))
  logging.info("model: %s, %d parameters; %d devices (%s), %d processes", model_cfg,
               state_count, dp.num_devices, backend, jax.process_count())

  run = dict(settings=cfg, data_cfg=data_cfg, tokenizer=tokenizer, model=model, dp=dp,
             local_batch=local_batch, eval_cache={}, decoders={},
             eval_step=dp.map_eval_step(step_lib.make_eval_step(model, cfg.label_smoothing)))
  p_train_step = dp.map_train_step(step_lib.make_train_step(model, tx, lr_fn,
                                                            cfg.label_smoothing, cfg.dropout_rng))
  writer = run_records.MetricsWriter(workdir, resume_step=start_step)
  run_records.write_manifest(workdir, settings._raw(config), seed=cfg.seed, extra={
      "parameters": int(state_count), "backend": backend, "resumed_from_step": start_step,
      "vocab_size": int(model_cfg.vocab_size)})
  progress = run_records.Progress(cfg.num_train_steps, start_step)
  pending: list[Any] = []
  tokens = 0.0
  summary: dict[str, float] = {}
  step = start_step
  if cfg.attention_diagnostics and start_step == 0:
    _log_attention(run, state.params, writer, 0, workdir)
  try:
    with _Preemption() as preemption:
      while step < cfg.num_train_steps:
        batch = _model_batch(next(train_iter))
        tokens += data.count_tokens(batch) * jax.process_count()
        state, metrics = p_train_step(state, dp.put_batch(batch), rng)
        pending.append(metrics)
        step += 1
        final = step == cfg.num_train_steps
        save = final or step % cfg.checkpoint_every_steps == 0
        evaluate_now = final or step % cfg.eval_every_steps == 0
        boundary = save or evaluate_now or step % cfg.log_every_steps == 0
        # One process polls its flag every step; several agree at logging boundaries only,
        # where they synchronise anyway.
        stop = preemption.requested if jax.process_count() == 1 else (
            boundary and preemption.agreed())
        if not (boundary or stop):
          continue
        host = [dp.fetch(m) for m in pending]
        bad = [start for start, m in zip(range(step - len(host) + 1, step + 1), host)
               if m["nonfinite"]]
        if bad:
          first_bad = host[bad[0] - (step - len(host) + 1)]
          raise NonFiniteError(
              f"non-finite loss or gradients at step {bad[0]} (loss_sum={first_bad['loss_sum']}, "
              f"grad_norm={first_bad['grad_norm']}); stopped, the last good checkpoint is kept "
              f"(steps on disk: {ckpt.all_steps() or 'none'})")
        summary = losses.summarize(_sum_metrics(host))
        writer.write(step, "train", summary)
        rates = progress.update(step, tokens, summary)
        writer.write(step, "perf", rates)
        pending, tokens = [], 0.0
        if evaluate_now:
          writer.write(step, "eval", evaluate(run, state.params, data_cfg.eval_split,
                                              cfg.num_eval_batches))
          if cfg.attention_diagnostics:
            _log_attention(run, state.params, writer, step, workdir)
          if cfg.bleu_eval_examples > 0 and not model_cfg.decoder_only:
            from transformer import evaluation  # noqa: PLC0415  (sacreBLEU only when asked)
            writer.write(step, "eval_bleu", evaluation.bleu_on_split(
                run, state.params, data_cfg.eval_split, limit=cfg.bleu_eval_examples))
        if save or stop:
          ckpt.save(step, dp.to_global(state), rng, train_iter,
                    {"identity": identity})
        if stop:
          logging.warning("preempted: checkpoint saved at step %d; exiting cleanly", step)
          ckpt.wait()
          return {"preempted": True, "step": step, "train": summary}
    if step == start_step and restored:  # already finished: report, do not train or save
      logging.info("the run in %s already reached step %d", workdir, step)
    test = evaluate(run, state.params, data_cfg.test_split)
    if cfg.decode_at_end and not model_cfg.decoder_only:
      decoded, examples = decode_split(run, state.params, data_cfg.test_split)
      test.update(decoded)
      for source, target, pred in examples:
        print(f"source {source}\n  target {target}\n  greedy {pred}", flush=True)
    writer.write(step, "test", test)
    logging.info("final test metrics at step %d: %s", step, test)
    return {"step": step, "train": summary, "test": test}
  finally:
    progress.close()
    ckpt.close()
    writer.close()
