"""The training loop end to end: exact resume after SIGKILL / SIGTERM, corrupt checkpoints,
the NaN guard and bad input (4 simulated CPU devices, a seconds-long synthetic run)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import train_fixtures as fx
from transformer import run_records, settings, train
from transformer.config import TransformerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "train_subprocess.py")
# The subprocesses inherit this process's XLA_FLAGS (conftest.py sets the 4 devices), so
# that a resumed run and the uninterrupted one in this process are the same programs.
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Runs here compile the same programs again and again: a persistent cache shares them
  (also with the subprocesses). A cached executable is the same program: same bits."""
  import jax  # noqa: PLC0415
  path = str(tmp_path_factory.mktemp("jax_cache"))
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  ENV["JAX_COMPILATION_CACHE_DIR"] = path
  ENV["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  yield
  jax.config.update("jax_compilation_cache_dir", previous)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """An uninterrupted 6-step run with checkpoints at 2, 4, 6."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  train.train_and_evaluate(fx.loop_config(data_dir), workdir)
  return workdir


def _helper(mode, spec):
  return subprocess.run([sys.executable, HELPER, mode, json.dumps(spec)], env=ENV, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_reference_run_records(reference):
  records = fx.run_metrics(reference)
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
  assert [r["step"] for r in records if r["split"] == "eval"] == [3, 6]
  timed = [r for r in run_records.read_metrics(reference) if "eval_seconds" in r]
  assert [r["step"] for r in timed] == [3, 6] and all(r["eval_seconds"] > 0 for r in timed)
  manifest = json.load(open(os.path.join(reference, "manifest.json")))
  assert manifest["device_count"] == 4 and manifest["seed"] == 0
  assert manifest["config"]["model"]["d_model"] == 32 and "git_commit" in manifest
  assert os.listdir(os.path.join(reference, "tensorboard"))


def test_sigkill_then_rerun_is_bitwise_identical(reference, data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  killed = _helper("loop", {"data_dir": data_dir, "workdir": workdir, "signal_at": 5})
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
             if s.isdigit()) < 6
  train.train_and_evaluate(fx.loop_config(data_dir), workdir)
  fx.assert_bitwise_equal(fx.checkpoint_params(workdir, 6), fx.checkpoint_params(reference, 6))
  assert fx.run_metrics(workdir) == fx.run_metrics(reference)


def test_sigterm_saves_exits_cleanly_and_resumes_exactly(reference, data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  stopped = _helper("loop", {"data_dir": data_dir, "workdir": workdir, "signal_at": 3,
                             "signal": "SIGTERM"})
  assert stopped.returncode == 0, stopped.stderr[-2000:]
  # The signal arrives while batch 4 is fetched: step 4 completes, is saved, and the run ends.
  assert json.loads(stopped.stdout.splitlines()[-1]) == {"step": 4, "preempted": True}
  assert "4" in os.listdir(os.path.join(workdir, "checkpoints"))
  train.train_and_evaluate(fx.loop_config(data_dir), workdir)
  fx.assert_bitwise_equal(fx.checkpoint_params(workdir, 6), fx.checkpoint_params(reference, 6))


def test_the_loop_runs_at_most_two_steps_ahead_of_the_device(reference, data_dir, tmp_path,
                                                             monkeypatch):
  """Dispatch is asynchronous: before step k + 1 is dispatched, step k - 2 has been fetched
  (waited for), even with no log line until the end, so a SIGTERM waits for <= 2 steps.
  The metrics logged are those of the uninterrupted run."""
  from transformer import data, parallel  # noqa: PLC0415
  fetched, seen = [], []
  original_fetch = parallel.DataParallel.fetch

  def counting_fetch(self, tree):
    if isinstance(tree, dict) and "nonfinite" in tree:  # a train step's metrics
      fetched.append(tree)
    return original_fetch(self, tree)

  monkeypatch.setattr(parallel.DataParallel, "fetch", counting_fetch)
  monkeypatch.setattr(data, "train_iterator", fx.hooked_train_iterator(
      data.train_iterator, lambda n: seen.append(len(fetched))))
  workdir = str(tmp_path / "run")
  config = fx.loop_config(data_dir, log_every_steps=6, eval_every_steps=6,
                          checkpoint_every_steps=6)
  train.train_and_evaluate(config, workdir)
  assert seen == [0, 0, 0, 1, 2, 3]  # when batch j is drawn, j - 1 steps are dispatched
  assert len(fetched) == 6
  final = [r for r in run_records.read_metrics(workdir) if r["split"] == "train"]
  assert [r["step"] for r in final] == [6]


@pytest.mark.parametrize("damage", ["truncate", "checksum"])
def test_corrupt_latest_checkpoint_falls_back(reference, data_dir, tmp_path, damage, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  latest = os.path.join(workdir, "checkpoints", "6")
  if damage == "truncate":
    for folder, _, files in os.walk(os.path.join(latest, "state")):
      for name in files:
        path = os.path.join(folder, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
  else:  # a readable checkpoint whose content does not match what was saved
    meta_path = os.path.join(latest, "meta", "metadata")
    meta = json.load(open(meta_path))
    meta["checksum"] += 1
    json.dump(meta, open(meta_path, "w"))
  train.train_and_evaluate(fx.loop_config(data_dir), workdir)
  assert "checkpoint at step 6 is unreadable or corrupt" in caplog.text
  assert "resuming from step 4" in caplog.text
  assert len(os.listdir(os.path.join(workdir, "corrupt_checkpoints"))) == 1
  fx.assert_bitwise_equal(fx.checkpoint_params(workdir, 6), fx.checkpoint_params(reference, 6))


def test_nan_guard_names_the_step_and_keeps_good_checkpoints(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = fx.loop_config(data_dir, **{"optim.schedule": "constant",
                                       "optim.learning_rate": 1e30, "optim.grad_clip_norm": 0.0,
                                       "checkpoint_every_steps": 1, "log_every_steps": 1})
  with pytest.raises(train.NonFiniteError, match=r"non-finite loss or gradients at step (\d+)") as e:
    train.train_and_evaluate(config, workdir)
  bad_step = int(e.value.args[0].split("at step ")[1].split()[0])
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert saved and max(saved) < bad_step
  for leaf in fx.checkpoint_params(workdir, max(saved)).values():
    assert np.all(np.isfinite(leaf))


def _snapshot(path):
  out = {}
  for folder, _, files in os.walk(path):
    for name in files:
      full = os.path.join(folder, name)
      out[full] = open(full, "rb").read()
  return out


@pytest.mark.parametrize("overrides, message", [
    ({"learning_rate": 0.1}, "unknown config key(s): learning_rate"),
    ({"batch_size": 6}, "batch_size=6 is not divisible by the device count 4"),
    ({"model.num_heads": 3}, "d_model=32 is not divisible by num_heads=3"),
    ({"model.attention_scale": "bogus"}, "attention_scale"),
    ({"model.hidden": 3}, "unknown TransformerConfig field(s): hidden"),
    ({"parallel.backend": "pjit"}, "parallel.backend='pjit' is not one of pmap, shard_map"),
    ({"optim.schedule": "noam"}, "schedule='noam' is not one of"),
    ({"data.dataset": "no_such_dataset"}, "data.dataset='no_such_dataset': Dataset no_such"),
    ({"model.d_model": 64}, "holds a run of another config (model.d_model: 32 -> 64)"),
])
def test_bad_config_fails_fast_and_leaves_the_workdir_alone(reference, data_dir, tmp_path,
                                                           overrides, message):
  workdir = str(tmp_path / "run")
  if "data.dataset" in overrides:  # a different dataset is first of all a different run
    os.makedirs(workdir)
    open(os.path.join(workdir, "notes.txt"), "w").write("keep me")
  else:
    shutil.copytree(reference, workdir)
  before = _snapshot(workdir)
  config = fx.loop_config(data_dir)
  if "learning_rate" in overrides:  # a key the config does not have (CLI: lock_config)
    config.unlock()
  for key, value in overrides.items():
    target = config
    *parents, last = key.split(".")
    for p in parents:
      target = target[p]
    target[last] = value
  with pytest.raises(settings.ConfigError) as e:
    train.train_and_evaluate(config, workdir)
  assert message in str(e.value) and "\n" not in str(e.value)
  assert _snapshot(workdir) == before


def test_unwritable_workdir_is_named(data_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(settings.ConfigError, match="is not writable"):
    train.train_and_evaluate(fx.loop_config(data_dir), str(blocker / "run"))
  assert blocker.read_text() == "not a directory"


def test_cli_prints_one_line_errors(tmp_path):
  base = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/default.py",
          f"--workdir={tmp_path / 'w'}"]
  bad_batch = subprocess.run(base + ["--config.batch_size=6"], env=ENV, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
  assert bad_batch.returncode == 1
  assert bad_batch.stderr.strip().splitlines()[-1] == (
      "error: batch_size=6 is not divisible by the device count 4 "
      "(data parallelism gives every device the same share)")
  unknown = subprocess.run(base + ["--config.no_such_key=1"], env=ENV, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
  assert unknown.returncode != 0 and "no_such_key" in unknown.stderr
  assert not os.path.exists(tmp_path / "w")


def test_a_workdir_of_another_config_is_refused_naming_keys_and_commit(tmp_path):
  """run_config.json holds the fully resolved config; a workdir recorded with another one
  (here: as an older commit wrote it, with attention biases and a custom_vjp key) is
  refused in one line naming the keys and the commit, before anything is written."""
  resolved = settings.resolved_config(*settings.resolve(fx.loop_config(str(tmp_path / "d"))))
  assert set(resolved["model"]) == {f.name for f in dataclasses.fields(TransformerConfig)}
  # `vision` is recorded by image runs only, so text runs' records stay as they were.
  assert set(resolved) >= {f.name for f in dataclasses.fields(settings.Settings)} - {"vision"}
  assert "vision" not in resolved
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / settings.RUN_CONFIG).write_text(json.dumps(resolved))
  assert settings.check_workdir(str(workdir), resolved)   # the same config resumes
  old = json.loads(json.dumps(resolved))
  old["model"].update(attention_bias=True, custom_vjp=False)
  (workdir / settings.RUN_CONFIG).write_text(json.dumps(old))
  (workdir / "manifest.json").write_text(json.dumps({"git_commit": "e8d931a"}))
  with pytest.raises(settings.ConfigError) as e:
    settings.check_workdir(str(workdir), resolved)
  message = str(e.value)
  assert "\n" not in message
  assert ("model.attention_bias: True -> False; model.custom_vjp: False -> (absent)"
          in message), message
  assert "last run at git commit e8d931a" in message and "check out that commit" in message
  assert resolved["prng_impl"] == "threefry2x32"   # the checkpointed key's layout
  (workdir / settings.RUN_CONFIG).write_text(json.dumps(resolved))
  later = json.loads(json.dumps(resolved))
  later["num_train_steps"] = 60   # not part of the identity: a run may be extended
  later["data"]["data_dir"] = "/elsewhere/tfds"   # where prepared data is cached: not compared
  assert settings.check_workdir(str(workdir), later)
  # A key added since the run was recorded resumes it at its default, not at another value.
  older = json.loads(json.dumps(resolved))
  del older["model"]["head_dim"], older["label_smoothing"]
  (workdir / settings.RUN_CONFIG).write_text(json.dumps(older))
  assert settings.check_workdir(str(workdir), resolved)
  changed = json.loads(json.dumps(resolved))
  changed["model"]["head_dim"] = 8
  with pytest.raises(settings.ConfigError, match=r"model.head_dim: \(absent\) -> 8"):
    settings.check_workdir(str(workdir), changed)


def test_a_run_whose_data_is_broken_is_named_as_such_not_as_another_version(tmp_path):
  """run.load: a recorded config that fits this code but whose data files are now empty is
  reported as the data problem (one line), not as a config of another version."""
  from transformer import run as run_lib  # noqa: PLC0415
  data = tmp_path / "texts"
  data.mkdir()
  for stem in ("train", "val", "test"):
    for lang in ("en", "de"):
      (data / f"{stem}.{lang}").write_text("")
  config = fx.loop_config(str(tmp_path / "d"), **{"data.dataset": "parallel_text",
                                                  "data.path": str(data)})
  config.data.tokenizer = "sentencepiece"
  resolved = settings.resolved_config(*settings.resolve(config))
  (tmp_path / settings.RUN_CONFIG).write_text(json.dumps(resolved))
  with pytest.raises(run_lib.RunError, match="train.en: file is empty") as e:
    run_lib.load(str(tmp_path))
  assert "does not fit this version" not in str(e.value) and "\n" not in str(e.value)
