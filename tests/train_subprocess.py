"""Runs training in a fresh process for tests that need one (kill, SIGTERM, several hosts).

  python tests/train_subprocess.py loop SPEC_JSON     train_and_evaluate(config, workdir)
  python tests/train_subprocess.py steps SPEC_JSON    N train steps on fixed batches -> JSON

`loop` spec: {"config": {...overrides of the test config...}, "workdir": ..., and
optionally "signal_at": K, "signal": "SIGKILL"|"SIGTERM"} — the process sends itself the
signal when the loop asks for batch K+1, i.e. after K train steps were dispatched.
`steps` spec: {"process_id", "num_processes", "port", "backends", "steps"}; prints the
per-step losses as JSON on the last stdout line.
"""

import json
import os
import signal
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_TESTS), _TESTS]


def _distributed(spec):
  import jax  # noqa: PLC0415
  if spec.get("num_processes", 1) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{spec['port']}",
                               num_processes=spec["num_processes"],
                               process_id=spec["process_id"])


def run_loop(spec):
  _distributed(spec)
  import train_fixtures  # noqa: PLC0415
  from transformer import data, train  # noqa: PLC0415
  if "signal_at" in spec:
    sig = getattr(signal, spec.get("signal", "SIGKILL"))

    def tripwire(n):  # signals as batch K + 1 is drawn
      if n == spec["signal_at"] + 1:
        os.kill(os.getpid(), sig)
    data.train_iterator = train_fixtures.hooked_train_iterator(data.train_iterator, tripwire)
  config = train_fixtures.loop_config(spec["data_dir"], **spec.get("config", {}))
  result = train.train_and_evaluate(config, spec["workdir"])
  print(json.dumps({"step": result["step"], "preempted": result.get("preempted", False)}))


def run_steps(spec):
  _distributed(spec)
  import jax  # noqa: PLC0415
  import train_fixtures  # noqa: PLC0415
  losses = {backend: train_fixtures.run_fixed_steps(backend, spec["steps"],
                                                    process_index=jax.process_index(),
                                                    process_count=jax.process_count())
            for backend in spec["backends"]}
  print(json.dumps(losses))


if __name__ == "__main__":
  mode, spec = sys.argv[1], json.loads(sys.argv[2])
  {"loop": run_loop, "steps": run_steps}[mode](spec)
