"""Two local processes with 2 CPU devices each (gloo collectives) = one process with 4."""

import json
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

import train_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "train_subprocess.py")


def _wait_all(procs, timeout=300):
  """(stdout, stderr) of each process; whatever still runs on the way out is killed, so that
  one crashed process cannot leave its partner blocked in a collective holding the cores."""
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices():
  port = portpicker.pick_unused_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen(
      [sys.executable, HELPER, "steps", json.dumps(
          {"process_id": i, "num_processes": 2, "port": port, "steps": 3,
           "backends": ["pmap"]})],
      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = _wait_all(procs)
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert results[0] == results[1]  # both processes see the same (psum'd) losses
  # Same global batch, same device count: only the collectives' transport differs. (pmap, the
  # default backend, only: each backend costs a compile per process; shard_map agrees with
  # pmap in test_train_step, and a 2-process shard_map run gives the same numbers too.)
  # Two processes sum over the devices in another order than one: rtol as for 1 vs 4 devices.
  np.testing.assert_allclose(results[0]["pmap"], fx.run_fixed_steps("pmap", 3), rtol=2e-5)


def _loop_pair(data_dir, workdir, **extra):
  """The real training loop in two processes (2 CPU devices each, gloo); their JSON results."""
  port = portpicker.pick_unused_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen(
      [sys.executable, HELPER, "loop", json.dumps(
          {"data_dir": data_dir, "workdir": workdir, "process_id": i, "num_processes": 2,
           "port": port, **extra})],
      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = _wait_all(procs)
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


@pytest.mark.slow
def test_two_processes_preempted_and_resumed_equal_an_uninterrupted_run(tmp_path):
  """Multi-host end to end: both processes get SIGTERM, agree on the step, save one Orbax
  checkpoint together (each its own Grain iterator state) and exit 0; a rerun resumes and
  ends with the bits and metrics of a run that was never stopped."""
  data_dir = str(tmp_path / "tfds")
  reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
  assert _loop_pair(data_dir, reference) == [{"step": 6, "preempted": False}] * 2
  stopped = _loop_pair(data_dir, resumed, signal_at=3, signal="SIGTERM")
  assert stopped[0] == stopped[1] and stopped[0]["preempted"], stopped
  assert str(stopped[0]["step"]) in os.listdir(os.path.join(resumed, "checkpoints"))
  assert stopped[0]["step"] < 6
  assert _loop_pair(data_dir, resumed) == [{"step": 6, "preempted": False}] * 2
  fx.assert_bitwise_equal(fx.checkpoint_params(resumed, 6), fx.checkpoint_params(reference, 6))
  assert fx.run_metrics(resumed) == fx.run_metrics(reference)
