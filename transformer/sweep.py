"""A sweep over config keys: one reproducible run per point (`transformer.sweep_grid`).

Each run lives in `DIR/<run name>/` (`attention_scale=none,d_ff=128,seed=0`) with the
usual manifest and metrics. A run that ended (finished, diverged or failed) leaves
`sweep_status.json` and is reused by the next call; an interrupted one has none and
resumes from its checkpoint (training resumes in its workdir). Every run directory is
checked against its point's config before anything trains. The launchers: 'local' runs
each in turn in this process, 'submitit' submits one job per run (SLURM where there is
one, else submitit's local subprocesses), both through `run_one`. Tables: `transformer.sweep_tables`; pictures: `transformer.sweep_plots`.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from absl import logging
from submitit.core.utils import UncompletedJobError

from transformer import settings
from transformer.sweep_grid import Point

STATUS_FILE = "sweep_status.json"
ENDED = ("finished", "diverged", "failed")
LAUNCHERS = ("local", "submitit")
TrainFn = Callable[[Any, str], Any]
Score = tuple[str, int]  # (split, beam size) of --score_split


def run_dir(workdir: str, point: Point) -> str:
  return os.path.join(workdir, point.run_name)


def _resolved(point: Point) -> dict[str, Any]:
  return settings.resolved_config(*settings.resolve(point.config))


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _check_same(recorded: Mapping[str, Any], resolved: Mapping[str, Any], directory: str) -> None:
  diffs = settings.differences(recorded, resolved)
  if diffs:
    raise ValueError(f"{directory} holds a run of another config ({diffs}); use a new "
                     "--workdir or delete that run directory")


def _ended(point: Point, directory: str) -> dict[str, Any] | None:
  """The status of a run that ended, or None; ValueError where it ended with another config
  (the keys training compares on resume, `settings.differences`). A run that finished at
  another step count has not ended: training continues it to the new count."""
  status = _read_json(os.path.join(directory, STATUS_FILE))
  if status is None:
    return None
  resolved = _resolved(point)
  _check_same(status.get("config") or {}, resolved, directory)
  if (status["status"] == "finished"
      and (status.get("config") or {}).get("num_train_steps") != resolved["num_train_steps"]):
    return None
  return status


def run_state(point: Point, workdir: str) -> dict[str, Any]:
  """{'state': finished/diverged/failed/interrupted/new, 'step', 'message'} of a point's run
  directory; ValueError where it holds a run of another config."""
  directory = run_dir(workdir, point)
  status = _ended(point, directory)
  if status is not None:
    return {"state": status["status"], "step": None, "message": status.get("message", "")}
  started = _read_json(os.path.join(directory, settings.RUN_CONFIG))
  if started is not None:
    _check_same(started, _resolved(point), directory)
    from transformer import run  # noqa: PLC0415  (Orbax: only for runs that started)
    steps = run.steps_in(run.checkpoints_dir(directory))
    if steps:
      return {"state": "interrupted", "step": steps[-1], "message": ""}
  return {"state": "new", "step": None, "message": ""}


def describe(points: Sequence[Point], workdir: str) -> str:
  """The dry run's listing: each run's state, directory and values."""
  states = [run_state(p, workdir) for p in points]
  counts = {s: sum(x["state"] == s for x in states) for s in (*ENDED, "interrupted", "new")}
  lines = [f"{len(points)} runs in {workdir}: "
           + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
  width = max(len(p.run_name) for p in points)
  for p, s in zip(points, states):
    what = {"interrupted": f"resumes from step {s['step']}",
            "new": "trains from the start"}.get(s["state"], "reused, not rerun")
    values = " ".join(f"{k}={v!r}" for k, v in {**p.values, "seed": p.seed}.items())
    lines.append(f"  {s['state']:<11} {p.run_name:<{width}}  {values}  ({what})")
  return "\n".join(lines)


def _record(point: Point, directory: str, status: Mapping[str, Any]) -> dict[str, Any]:
  return {"name": point.name, "values": dict(point.values), "axes": dict(point.axes),
          "seed": point.seed,
          "run_dir": directory, "status": status["status"], "message": status.get("message", ""),
          "config": status.get("config")}


def run_one(point: Point, directory: str, train_fn: TrainFn, score: Score | None = None
            ) -> dict[str, Any]:
  """Trains one run unless it already ended (with the same config); returns its record.
  With `score` (split, beam size), a run that finishes is scored at once (`score_run`)."""
  status = _ended(point, directory)
  if status is not None:
    logging.info("reusing %s (%s)", directory, status["status"])
    return _record(point, directory, status)
  resolved = _resolved(point)
  os.makedirs(directory, exist_ok=True)
  from transformer.train import NonFiniteError  # noqa: PLC0415  (heavy import)
  try:
    result = train_fn(point.config, directory)
    if isinstance(result, dict) and result.get("preempted"):
      raise KeyboardInterrupt("preempted: the sweep stops and resumes on the next call")
    status = {"status": "finished", "message": ""}
  except NonFiniteError as e:
    status = {"status": "diverged", "message": str(e)}
  except (KeyboardInterrupt, settings.ConfigError, UncompletedJobError):
    raise  # stopped, not ended (a submitit time limit among them): the next call resumes
  except Exception as e:  # noqa: BLE001  (a failed run is recorded, never silently dropped)
    logging.error("run %s failed:\n%s", directory, traceback.format_exc())
    status = {"status": "failed", "message": f"{type(e).__name__}: {e}"}
  finally:
    # Each run compiles its own programs; a long sweep in one process would keep them all
    # and run out of memory maps (vm.max_map_count): LLVM "Cannot allocate memory", then a
    # segfault, after ~48 runs of the d_k study. Dropping them costs nothing: no later run
    # has the same shapes unless the persistent compilation cache holds them anyway.
    jax.clear_caches()
  status.update(config=resolved, name=point.name, values=point.values, seed=point.seed)
  if score is not None and status["status"] == "finished":
    score_run(directory, *score)
  _write_json(os.path.join(directory, STATUS_FILE), status)
  return _record(point, directory, status)


def score_file(split: str, beam_size: int) -> str:
  return f"score_{split}_beam{beam_size}.json"


def check_score_split(point: Point, split: str) -> None:
  """ValueError in one line, before anything trains, where the data has no such split."""
  from transformer.data import sources  # noqa: PLC0415
  _, data_cfg, _, _ = settings.resolve(point.config)
  if data_cfg.images or data_cfg.decoder_only:
    raise ValueError(f"--score_split={split}: decodes translations (BLEU); {data_cfg.dataset} "
                     "runs have their split metrics in the tables already")
  try:
    sources.data_source(data_cfg, split)
  except ValueError as e:
    raise ValueError(f"--score_split={split}: {str(e).splitlines()[0]}") from None


def score_run(directory: str, split: str, beam_size: int = 1, alpha: float = 0.6
              ) -> dict[str, Any]:
  """BLEU and chrF of a finished run's latest checkpoint on `split` (`commands.evaluate`),
  decoded once: RUN/score_SPLIT_beamB.json is kept and reused. The sweep scores each run as
  it finishes, so the score outlives checkpoints that a scratch disk or a lent machine does
  not keep; the study's choices are all made before its grid runs."""
  path = os.path.join(directory, score_file(split, beam_size))
  score = _read_json(path)
  if score is None:
    from transformer import commands  # noqa: PLC0415  (decoding: JAX)
    with open(os.devnull, "w") as devnull:
      result = commands.evaluate(directory, split=split, beam_size=beam_size, alpha=alpha,
                                 perplexity=False, stdout=devnull)
    score = {k: result[k] for k in ("bleu", "chrf", "bleu_signature", "chrf_signature",
                                    "lines", "checkpoint")}
    score.update(split=split, beam_size=beam_size, alpha=alpha)
    _write_json(path, score)
    logging.info("%s: %s BLEU %.2f", directory, split, score["bleu"])
  return score


def score_runs(records: Sequence[dict[str, Any]], split: str, *, beam_size: int = 1,
               alpha: float = 0.6) -> list[dict[str, Any]]:
  """The records with "score" (`score_run`) for each finished run; those scored before are
  read back, not decoded again."""
  return [{**r, "score": score_run(r["run_dir"], split, beam_size, alpha)}
          if r["status"] == "finished" else dict(r) for r in records]


def ended_records(points: Sequence[Point], workdir: str, score: Score | None = None
                  ) -> list[dict[str, Any]]:
  """The records of the points whose runs have ended, in the points' order, each with its
  saved score (`score_run`'s file for `score`) where it has one; nothing is trained or
  decoded. The tables of a study that spans sessions, before its last runs end."""
  records = []
  for p in points:
    directory = run_dir(workdir, p)
    status = _ended(p, directory)
    if status is None:
      continue
    record = _record(p, directory, status)
    saved = _read_json(os.path.join(directory, score_file(*score))) if score else None
    if saved is not None:
      record["score"] = saved
    records.append(record)
  return records


def run_point(point: Point, directory: str, score: Score | None = None) -> dict[str, Any]:
  """The submitit job: `run_one` with the real training, in a fresh process."""
  from transformer import run_records  # noqa: PLC0415
  from transformer.train import train_and_evaluate  # noqa: PLC0415
  run_records.quiet_library_logs()
  return run_one(point, directory, train_and_evaluate, score)


def run_sweep(points: Sequence[Point], workdir: str, *, launcher: str = "local",
              train_fn: TrainFn | None = None, submitit_options: Mapping[str, Any] | None = None,
              score: Score | None = None) -> list[dict[str, Any]]:
  """Runs (or reuses) every point; returns one record per run, in the points' order.

  Every run directory is checked first, so a changed config stops the sweep before any
  training. `train_fn` (default `train.train_and_evaluate`) is for the local launcher;
  `score` (split, beam size) scores each run as it finishes (`score_run`).
  """
  if launcher not in LAUNCHERS:
    raise ValueError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
  for p in points:
    run_state(p, workdir)
  os.makedirs(workdir, exist_ok=True)
  if launcher == "submitit":
    if train_fn is not None:
      raise ValueError("the submitit launcher trains with train.train_and_evaluate only")
    return _run_submitit(points, workdir, score=score, **(submitit_options or {}))
  if train_fn is None:
    from transformer.train import train_and_evaluate as train_fn  # noqa: PLC0415
  return [run_one(p, run_dir(workdir, p), train_fn, score) for p in points]


def _run_submitit(points: Sequence[Point], workdir: str, *, timeout_min: int = 240,
                  gpus_per_run: int = 0, cpus_per_run: int | None = None,
                  mem_gb: float | None = None, partition: str | None = None,
                  account: str | None = None, array_parallelism: int = 4,
                  score: Score | None = None) -> list[dict[str, Any]]:
  """One submitit job per run that has not ended; waits for them and collects the records.

  SLURM runs them as one job array (at most `array_parallelism` at once); submitit's local
  executor starts every job it is given at once, so it gets them in waves of that size.
  """
  import submitit  # noqa: PLC0415
  executor = submitit.AutoExecutor(folder=os.path.join(workdir, "submitit"))
  executor.update_parameters(
      name=f"sweep-{os.path.basename(os.path.abspath(workdir))}", timeout_min=timeout_min,
      gpus_per_node=gpus_per_run or None, tasks_per_node=1, cpus_per_task=cpus_per_run,
      mem_gb=mem_gb, slurm_partition=partition, slurm_account=account,
      slurm_array_parallelism=array_parallelism)
  records = {r["run_dir"]: r for r in ended_records(points, workdir)}  # reused without a job
  todo = [p for p in points if run_dir(workdir, p) not in records]
  wave = len(todo) if executor.cluster == "slurm" else array_parallelism
  for start in range(0, len(todo), max(wave, 1)):
    batch = todo[start:start + wave]
    jobs = executor.map_array(run_point, batch, [run_dir(workdir, p) for p in batch],
                              [score] * len(batch))
    logging.info("submitted %d jobs (%s) to %s", len(jobs), executor.cluster,
                 ", ".join(j.job_id for j in jobs))
    for p, job in zip(batch, jobs):
      records[run_dir(workdir, p)] = _collect(p, run_dir(workdir, p), job)
  return [records[run_dir(workdir, p)] for p in points]


def _collect(point: Point, directory: str, job) -> dict[str, Any]:
  """The job's record; a job that ended without a status is reported as failed (and,
  having no status file, runs again on the next call)."""
  try:
    return job.result()
  except Exception as e:  # noqa: BLE001  (submitit's FailedJobError / UncompletedJobError)
    status = _read_json(os.path.join(directory, STATUS_FILE))
    if status is not None:
      return _record(point, directory, status)
    return _record(point, directory, {"status": "failed", "message": (
        f"submitit job {job.job_id} ended without a status: {_job_error(e)}; "
        f"log: {job.paths.stderr}")})


def _job_error(error: Exception) -> str:
  """The last line of the job's traceback, else the error's first line."""
  parts = str(error).split("-" * 22)
  if len(parts) > 2:  # FailedJobError quotes the traceback between two dashed lines
    lines = [line.strip() for line in parts[1].splitlines() if line.strip()]
    if lines:
      return lines[-1]
  first = str(error).strip().splitlines()
  return f"{type(error).__name__}: {first[0] if first else ''}"
