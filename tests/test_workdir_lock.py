"""One training per workdir: a second `experiments.train` on a busy workdir fails at once in
one line naming the holder; SIGTERM exits 75 (and the run is unharmed); a dead holder's
lock is taken over; the read-only tools and a second sweep behave."""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import train_fixtures as fx
from transformer import commands, sweep, sweep_grid, train, workdir_lock
from transformer import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
# Deadlines, not sleeps: generous, so that a loaded machine (the suite beside a training) is
# slow here rather than failing; a run that never trains still fails.
DEADLINE_S = 600


def _config_file(path, data_dir, **overrides):
  """A config file for `experiments.train`: the loop tests' synthetic run with overrides."""
  path.write_text(textwrap.dedent(f"""\
      import sys
      sys.path.insert(0, {TESTS!r})
      import train_fixtures
      def get_config():
        return train_fixtures.loop_config({data_dir!r}, **{overrides!r})
      """))
  return str(path)


def _wait_for(predicate, timeout, what):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.1)


@pytest.fixture(scope="module")
def contested(tmp_path_factory):
  """A long run A; B started on its workdir once A trains; then SIGTERM to A. (That the same
  command resumes exactly is test_train_loop's SIGTERM test.)"""
  tmp = tmp_path_factory.mktemp("contested")
  data_dir, workdir = str(tmp / "tfds"), str(tmp / "run")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  long = dict(num_train_steps=10**6, log_every_steps=20, eval_every_steps=10**6,
              checkpoint_every_steps=10**6)
  cmd = lambda config: [sys.executable, "-m", "experiments.train",  # noqa: E731
                        f"--config={config}", f"--workdir={workdir}"]
  a = subprocess.Popen(cmd(_config_file(tmp / "a.py", data_dir, **long)), env=env, cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    metrics = os.path.join(workdir, "metrics.jsonl")
    _wait_for(lambda: a.poll() is not None or (
        os.path.exists(metrics) and '"train"' in open(metrics).read()), DEADLINE_S, "A to train")
    assert a.poll() is None, a.communicate()[1][-3000:]
    holder = json.loads(open(os.path.join(workdir, workdir_lock.LOCK_FILE)).read())
    start = time.monotonic()
    b = subprocess.run(cmd(_config_file(tmp / "b.py", data_dir, **long)), env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=DEADLINE_S)
    b_seconds = time.monotonic() - start
    a_alive_after_b = a.poll() is None
    a.send_signal(signal.SIGTERM)
    a_out, a_err = a.communicate(timeout=DEADLINE_S)
  finally:
    if a.poll() is None:
      a.kill()
      a.wait()
  stopped = re.search(r"preempted at step (\d+)", a_err)
  assert stopped, a_err[-3000:]
  return dict(data_dir=data_dir, workdir=workdir, holder=holder, a=a, a_err=a_err, b=b,
              b_seconds=b_seconds, a_alive_after_b=a_alive_after_b,
              stopped=int(stopped.group(1)), rows=fx.run_metrics(workdir))


def test_second_start_fails_at_once_in_one_line_naming_the_holder(contested):
  b, holder, a = contested["b"], contested["holder"], contested["a"]
  assert holder["pid"] == a.pid and holder["host"] == socket.gethostname()
  assert b.returncode == 1, b.stderr[-3000:]
  assert "Traceback" not in b.stderr
  assert b.stderr.strip().splitlines()[-1] == (
      f"error: workdir {contested['workdir']} is in use by a training on host "
      f"{socket.gethostname()}, pid {a.pid}, since {holder['since']}; wait for it, or stop it")
  assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", holder["since"])
  assert contested["a_alive_after_b"]  # refused while A still ran, not queued behind it
  assert contested["b_seconds"] < 60, contested["b_seconds"]  # startup only: no waiting


def test_sigterm_exits_75_and_a_is_unharmed(contested):
  a, stopped = contested["a"], contested["stopped"]
  assert a.returncode == train.PREEMPTED_EXIT_CODE == 75, contested["a_err"][-3000:]
  assert contested["a_err"].strip().splitlines()[-1] == (
      f"preempted at step {stopped} (checkpoint saved); the same command resumes")
  # A released its lock on the way out: the next start needs no take-over.
  assert open(os.path.join(contested["workdir"], workdir_lock.LOCK_FILE)).read() == ""
  # B wrote nothing: one row per (step, split), one checkpoint (A's, read by the tools below).
  keys = [(r["step"], r["split"]) for r in contested["rows"]]
  assert keys and len(keys) == len(set(keys)), keys
  assert [s for s in os.listdir(os.path.join(contested["workdir"], "checkpoints"))
          if s.isdigit()] == [str(stopped)]


def test_tools_read_a_locked_workdir(contested):
  """Run in this process while it holds the lock: a tool that took it would be refused."""
  workdir = contested["workdir"]
  with workdir_lock.held(workdir):
    out = io.StringIO()
    commands.average(workdir, 1, stdout=out)
    assert "averaged" in out.getvalue()
    split = run_lib.load(workdir).data.eval_split
    assert commands.evaluate(workdir, split=split, beam_size=1, limit=1, batch_size=8,
                             perplexity=False, stdout=io.StringIO())
    commands.translate(workdir, beam_size=1, checkpoint="averaged", batch_size=8,
                       stdin=io.StringIO("3 4 5\n"), stdout=io.StringIO())


def test_a_sweep_run_on_a_busy_directory_stops_the_sweep_unrecorded(contested, tmp_path):
  """A second sweep reaching the run the first one trains: one-line error, no 'failed'."""
  point = sweep_grid.plan(fx.loop_config(contested["data_dir"]), [], [0])[0]
  directory = str(tmp_path / point.run_name)
  with workdir_lock.held(directory):
    with pytest.raises(workdir_lock.WorkdirInUseError, match=f"pid {os.getpid()}, since"):
      sweep.run_one(point, directory, train.train_and_evaluate)
  assert not os.path.exists(os.path.join(directory, sweep.STATUS_FILE))


def _write_record(workdir, **record):
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lock.LOCK_FILE)
  with open(path, "w") as f:
    f.write(json.dumps({"since": "2026-01-01T00:00:00Z", **record}) + "\n")
  return path


def test_a_dead_holder_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  path = _write_record(str(tmp_path), host=socket.gethostname(), pid=gone.pid)
  with workdir_lock.held(str(tmp_path)):
    assert json.loads(open(path).read())["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirInUseError, match=f"pid {os.getpid()}, since"):
      with workdir_lock.held(str(tmp_path)):  # a second holder, even in this process
        pass
  assert any("taking over the lock" in r.getMessage() and f"pid {gone.pid}" in r.getMessage()
             for r in caplog.records)
  assert open(path).read() == ""


def test_a_lock_from_another_host_is_refused_until_stale(tmp_path, caplog):
  path = _write_record(str(tmp_path), host="elsewhere", pid=1)
  with pytest.raises(workdir_lock.WorkdirInUseError, match="on host elsewhere, pid 1.*another"):
    with workdir_lock.held(str(tmp_path)):
      pass
  old = time.time() - workdir_lock.STALE_S - 60
  os.utime(path, (old, old))
  with workdir_lock.held(str(tmp_path)):
    pass
  assert any("silent for" in r.getMessage() for r in caplog.records)


def test_an_error_in_training_passes_through_and_releases_the_lock(tmp_path):
  with pytest.raises(TimeoutError, match="orbax"):  # not mistaken for "in use"
    with workdir_lock.held(str(tmp_path)):
      raise TimeoutError("orbax")
  assert open(os.path.join(tmp_path, workdir_lock.LOCK_FILE)).read() == ""
  with workdir_lock.held(str(tmp_path)):
    pass
