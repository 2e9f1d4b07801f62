"""The training loop: `train_and_evaluate(config, workdir)`.

Order of business: check the config and the workdir (one-line errors, nothing
written), build the tokenizer and model, take the workdir lock (`workdir_lock`), restore
the newest good checkpoint or initialise, then train with periodic logging, evaluation and
checkpoints. SIGTERM (preemption) saves a checkpoint and returns cleanly (experiments.train
then exits with PREEMPTED_EXIT_CODE); a non-finite loss or gradient stops with an error
naming the step and leaves the last good checkpoint alone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from transformer import (attention_maps, checkpoint, data, diagnostics, losses, optim, parallel,
                         run_records, settings, workdir_lock)
from transformer import run as run_lib
from transformer import step as step_lib
from transformer.run import Run


# sysexits.h EX_TEMPFAIL ("temporary failure, retry later"): preempted and saved, rerun the
# same command to resume; distinct from 0 (finished) and 1 (error) for schedulers and scripts.
PREEMPTED_EXIT_CODE = 75


class NonFiniteError(FloatingPointError):
  """The loss or the gradients stopped being finite."""


# Steps dispatched ahead of the last one known complete. JAX dispatches asynchronously, so
# without a bound the loop runs up to log_every_steps ahead of the device, and a SIGTERM
# waits for all of those steps before it can save: ~30 steps, 2 min, were seen on a run of
# 5 s steps, beyond a cloud preemption's ~30 s notice. Two keep the next step queued while
# the host prepares a batch.
_IN_FLIGHT = 2


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


def _sum_metrics(host_metrics: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Sums over steps; per-step values (learning rate, grad norm) are averaged."""
  out = {k: float(sum(m[k] for m in host_metrics)) for k in host_metrics[0]}
  for k in ("learning_rate", "grad_norm"):
    out[k] /= len(host_metrics)
  out.pop("nonfinite")
  return out


def _eval_batches(run: Run, split: str) -> list[dict[str, np.ndarray]]:
  """This process's padded batches of a split, prepared once per run."""
  key = ("eval_batches", split)
  if key not in run.cache:
    run.cache[key] = data.eval_batches(
        run.data, run.tokenizer, split, batch_size=run.local_batch,
        process_index=jax.process_index(), process_count=jax.process_count())
  return run.cache[key]


def evaluate(run: Run, dp: parallel.DataParallel, params: Any, split: str,
             limit: int = 0) -> dict[str, float]:
  """Teacher-forced metrics of a split (exact_match here is teacher-forced too)."""
  if "eval_step" not in run.cache:
    run.cache["eval_step"] = dp.map_eval_step(
        step_lib.make_eval_step(run.model, run.settings.label_smoothing))
  total: dict[str, float] = {}
  for batch in _eval_batches(run, split)[:limit or None]:
    sums = dp.fetch(run.cache["eval_step"](params, dp.put_batch(batch)))
    for k, v in sums.items():
      total[k] = total.get(k, 0.0) + float(v)
  return losses.summarize(total, run.text_unit)


def decode_split(run: Run, params: Any, split: str) -> tuple[dict[str, float], list]:
  """Greedy decoding of this process's rows of a split: sequence exact match (all processes)
  and the first `decode_examples` (source, target, output) texts."""
  from transformer import evaluation  # noqa: PLC0415  (sacreBLEU only when asked)
  rows = [(b, r) for b in _eval_batches(run, split) for r in np.flatnonzero(b["valid"])]
  sources = [b["inputs"][r][b["inputs_segment_ids"][r] != 0] for b, r in rows]
  # Targets end in EOS; translate_ids returns the tokens before it.
  targets = [b["targets"][r][b["targets_segment_ids"][r] != 0][:-1] for b, r in rows]
  outputs = evaluation.translate_ids(run, params, sources, beam_size=1,
                                     batch_size=run.local_batch)
  exact = sum(np.array_equal(o, t) for o, t in zip(outputs, targets))
  count = len(rows)
  decode = run.tokenizer.decode
  examples = [(decode(s[:-1].tolist()), decode(t.tolist()), decode(o.tolist()))
              for s, t, o in list(zip(sources, targets, outputs))[:run.settings.decode_examples]]
  if jax.process_count() > 1:
    exact, count = multihost_utils.process_allgather(np.array([exact, count])).sum(0)
  return {"greedy_exact_match": exact / max(count, 1), "decoded": float(count)}, examples


def _log_attention(run: Run, dp: parallel.DataParallel, params: Any, writer, step: int
                   ) -> None:
  """Attention diagnostics of a fixed probe batch (the eval split's first rows).

  Logged under split 'attention', at step 0 too (the initialisation, where §3.2.1's
  argument about the logit variance applies); the first probe example's maps are saved to
  WORKDIR/attention_probe.npz with its tokens ('tokens/source', 'tokens/target'; see
  `attention_maps.probe_tokens`; an image run: its patches' labels and the image itself,
  `attention_maps.probe_image`), overwritten at each evaluation; the sweep plots the last.
  """
  if "probe" not in run.cache:
    first = _eval_batches(run, run.data.eval_split)[0]
    run.cache["probe"] = diagnostics.Probe(run.model, first)
    run.cache["probe_tokens"] = (attention_maps.probe_image(run.vision, first) if run.data.images
                                 else attention_maps.probe_tokens(run.tokenizer, first))
  stats, maps = run.cache["probe"](dp.fetch(params))
  writer.write(step, "attention", stats)
  if jax.process_index() == 0:
    tmp = os.path.join(run.workdir, "attention_probe.tmp.npz")
    np.savez(tmp, **maps, **run.cache["probe_tokens"])
    os.replace(tmp, os.path.join(run.workdir, attention_maps.PROBE_FILE))


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds this run); returns the final metrics, or
  {'preempted': True, 'step', 'train'} after a SIGTERM (exit with PREEMPTED_EXIT_CODE).

  Raises workdir_lock.WorkdirInUseError (a ConfigError) if another training holds `workdir`.
  """
  run = run_lib.create(config, workdir)  # one-line ConfigErrors, nothing written yet
  # The input pipeline first (it prepares data under data_dir, with its own lock): a data
  # error then leaves no workdir behind.
  train_iter = data.train_iterator(run.data, run.tokenizer, batch_size=run.local_batch,
                                   seed=run.settings.seed, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  with workdir_lock.held(workdir):  # before the first write into the workdir
    return _train(run, workdir, train_iter)


def _train(run: Run, workdir: str, train_iter) -> dict[str, Any]:
  cfg, model_cfg = run.settings, run.model.config
  tx, schedule = run.optimizer()
  lr_fn = lambda s: optim.learning_rate_at(schedule, run.optim, s)  # noqa: E731
  dp = parallel.DataParallel(run.backend)
  run_lib.record_vocabulary(run)  # before run_config.json: a recorded run has its copy
  settings.record_config(workdir, run.config)

  init_key, dropout_key = jax.random.split(jax.random.key(cfg.seed))
  rng = jax.random.key_data(dropout_key)
  abstract_global = run.abstract_state(dp.replicated)
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
    state = dp.put_replicated(jax.jit(run.init_state)(init_key))
    rng = np.asarray(rng)
  state_count = sum(x.size for x in jax.tree.leaves(abstract_global["train"].params))
  logging.info("model: %s, %d parameters; %d devices (%s), %d processes", model_cfg,
               state_count, dp.num_devices, run.backend, jax.process_count())

  p_train_step = dp.map_train_step(step_lib.make_train_step(run.model, tx, lr_fn,
                                                            cfg.label_smoothing))
  writer = run_records.MetricsWriter(workdir, resume_step=start_step)
  run_records.write_manifest(workdir, run.config, seed=cfg.seed, extra={
      "parameters": int(state_count), "backend": run.backend, "resumed_from_step": start_step,
      "vocab_size": int(model_cfg.vocab_size)})
  progress = run_records.Progress(cfg.num_train_steps, start_step)
  pending: list[Any] = []   # metrics of dispatched steps, on the device
  fetched: list[Any] = []   # metrics of completed steps since the last log line, on the host
  tokens = 0.0
  summary: dict[str, float] = {}
  step = start_step
  if cfg.attention_diagnostics and start_step == 0:
    _log_attention(run, dp, state.params, writer, 0)
  try:
    with _Preemption() as preemption:
      while step < cfg.num_train_steps:
        batch = next(train_iter)
        tokens += data.count_tokens(batch) * jax.process_count()
        state, metrics = p_train_step(state, dp.put_batch(batch), rng)
        pending.append(metrics)
        if len(pending) > _IN_FLIGHT:  # waits for step - _IN_FLIGHT (see _IN_FLIGHT)
          fetched.append(dp.fetch(pending.pop(0)))
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
        host = fetched + [dp.fetch(m) for m in pending]
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
        pending, fetched, tokens = [], [], 0.0
        if evaluate_now:
          began = time.perf_counter()  # evaluation's share of the run is a budget (BUILD_NOTES)
          writer.write(step, "eval", evaluate(run, dp, state.params, run.data.eval_split,
                                              cfg.num_eval_batches))
          if cfg.attention_diagnostics:
            _log_attention(run, dp, state.params, writer, step)
          if cfg.bleu_eval_examples > 0 and not (model_cfg.decoder_only or run.data.images):
            from transformer import evaluation  # noqa: PLC0415  (sacreBLEU only when asked)
            writer.write(step, "eval_bleu", evaluation.bleu_on_split(
                run, state.params, run.data.eval_split, limit=cfg.bleu_eval_examples))
          rates = {**rates, "eval_seconds": time.perf_counter() - began}
        writer.write(step, "perf", rates)  # one row per (step, split), the eval's time included
        if save or stop:
          ckpt.save(step, dp.to_global(state), rng, train_iter)
        if stop:
          logging.warning("preempted: checkpoint saved at step %d; exiting cleanly", step)
          ckpt.wait()
          return {"preempted": True, "step": step, "train": summary}
    if step == start_step and restored:  # already finished: report, do not train or save
      logging.info("the run in %s already reached step %d", workdir, step)
    test = evaluate(run, dp, state.params, run.data.test_split)
    if cfg.decode_at_end and not (model_cfg.decoder_only or run.data.images):
      decoded, examples = decode_split(run, state.params, run.data.test_split)
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
