"""Bad input (issue 17, items 4 and 5): one line naming the value and what is allowed, a
nonzero exit, nothing written, before anything is compiled; never a traceback or a silently
wrong result. Flag parsing goes through real entry points (started together, since each
pays for its imports); the rest is called in-process."""

import math
import os
import subprocess
import sys

import pytest

from train_fixtures import set_keys
from transformer import commands, settings
from transformer import run as run_lib
from transformer.data import DataConfig, locking, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (entry point, --config value, the one line); {tmp} is the test's folder.
_COMMAND_LINES = {
    "missing_file": ("experiments.train", "{tmp}/nope.py",
                     "error: --config={tmp}/nope.py: config file '{tmp}/nope.py' does not exist"),
    "directory": ("experiments.sweep", "experiments/configs",
                  "error: --config=experiments/configs: config file 'experiments/configs' "
                  "is a directory"),
    "syntax_error": ("experiments.train", "{tmp}/broken.py",
                     "error: --config={tmp}/broken.py: syntax error in {tmp}/broken.py line 2"),
    "import_error": ("experiments.benchmark", "{tmp}/imports.py",
                     "error: --config={tmp}/imports.py: ModuleNotFoundError: No module named "
                     "'no_such_module'"),
    "unknown_variant": ("experiments.train", "experiments/configs/wmt14.py:huge",
                        "error: --config=experiments/configs/wmt14.py:huge: ValueError: unknown "
                        "wmt14 variant 'huge'; valid: base, big"),
    "variant_not_taken": ("experiments.train", "experiments/configs/default.py:big",
                          "error: --config=experiments/configs/default.py:big: "
                          "experiments/configs/default.py takes no variant (use "
                          "--config=experiments/configs/default.py)"),
}


@pytest.fixture(scope="module")
def command_lines(tmp_path_factory):
  """{case: (stderr, exit code, tmp)}: every entry point started at once."""
  tmp = str(tmp_path_factory.mktemp("cli"))
  with open(os.path.join(tmp, "broken.py"), "w") as f:
    f.write("def get_config():\n  return (\n")
  with open(os.path.join(tmp, "imports.py"), "w") as f:
    f.write("import no_such_module\n")
  procs = {}
  for case, (module, config, _) in _COMMAND_LINES.items():
    args = [f"--config={config.format(tmp=tmp)}", f"--workdir={tmp}/run_{case}"]
    if module == "experiments.sweep":
      args.append("--grid=seed=0")
    procs[case] = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  return {case: (p.communicate(timeout=120)[1], p.returncode, tmp) for case, p in procs.items()}


@pytest.mark.parametrize("case", list(_COMMAND_LINES))
def test_a_bad_config_file_fails_in_one_line(command_lines, case):
  stderr, code, tmp = command_lines[case]
  assert code != 0
  assert "Traceback" not in stderr, stderr[-2000:]
  lines = [line for line in stderr.splitlines() if line.strip()
           and not line.startswith(("I1", "W1"))]
  assert len(lines) == 1 and lines[0].startswith(_COMMAND_LINES[case][2].format(tmp=tmp)), lines
  assert not os.path.exists(os.path.join(tmp, f"run_{case}"))  # nothing written


def _config(**overrides):
  """The default experiment's config with `section__key` overrides (`section.key`)."""
  from experiments.configs import default  # noqa: PLC0415
  return set_keys(default.get_config(), {k.replace("__", "."): v for k, v in overrides.items()})


@pytest.mark.parametrize("overrides,message", [
    ({"model__max_len": 8}, "model.max_len=8 is shorter than data.max_target_length=24 and "
     "data.max_source_length=24: the model takes at most max_len tokens; set model.max_len >= "
     "24"),
    ({"model__max_len": 20, "model__positional_encoding": "learned", "data__max_source_length": 16,
      "data__max_target_length": 16, "data__max_eval_length": 32},
     "model.max_len=20 is shorter than data.max_eval_length=32"),
    ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
    ({"batch_size": -4}, "batch_size=-4 must be a positive integer"),
])
def test_a_config_that_would_mislead_is_refused(tmp_path, overrides, message):
  with pytest.raises(settings.ConfigError, match="^invalid config: ") as e:
    run_lib.create(_config(**overrides), str(tmp_path / "run"))
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()


def test_max_len_covering_the_data_is_accepted():
  settings.resolve(_config(model__max_len=24))  # exactly the configured lengths


@pytest.mark.parametrize("where,message", [
    ("a_file", "data.data_dir='{tmp}/a_file' is not a directory; give a directory"),
    ("a_file/under", "data.data_dir='{tmp}/a_file/under' is not a directory: {tmp}/a_file is "
     "a file; give a directory"),
])
def test_a_data_dir_that_is_no_directory_is_refused(tmp_path, where, message):
  (tmp_path / "a_file").write_text("x")
  config = _config(data__data_dir=str(tmp_path / where))
  with pytest.raises(settings.ConfigError) as e:
    run_lib.create(config, str(tmp_path / "run"))
  assert str(e.value) == message.format(tmp=tmp_path) + " (it need not exist yet)"
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dataset,tokenizer,message", [
    ("parallel_text", "sentencepiece", "data.path='/nope' does not exist; parallel_text reads a "
     "folder of {split}.{lang}[.gz] files"),
    ("parallel_text", "byte", "data.path='/nope' does not exist; parallel_text reads"),
    ("lm_text", "byte", "data.path='/nope' does not exist; lm_text reads one text file"),
])
def test_a_missing_data_path_is_refused(tmp_path, dataset, tokenizer, message):
  config = _config(data__dataset=dataset, data__path="/nope", data__tokenizer=tokenizer,
                   data__data_dir=str(tmp_path / "data"),
                   model__num_encoder_layers=0 if dataset == "lm_text" else 2)
  with pytest.raises(settings.ConfigError) as e:
    run_lib.create(config, str(tmp_path / "run"))
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_a_missing_split_file_names_it(tmp_path):
  (tmp_path / "texts").mkdir()
  cfg = DataConfig(dataset="parallel_text", path=str(tmp_path / "texts"),
                   data_dir=str(tmp_path / "data"))
  with pytest.raises(ValueError, match=r"^data.path='.*texts': .*train\.en: no such file"):
    sources.data_source(cfg, "train")


def test_a_lock_that_cannot_be_created_is_one_line(tmp_path):
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(locking.LockError, match="^cannot create the lock file .*a_file/x.lock: "
                     "part of its path is a file; the folder must be a writable directory"):
    with locking.file_lock(str(tmp_path / "a_file" / "x.lock")):
      pass


def test_a_read_only_unprepared_data_dir_is_refused_before_training(tmp_path):
  read_only = _read_only(str(tmp_path / "empty"), str(tmp_path / "ro"), make=True)
  if read_only is None:
    pytest.skip("cannot make a read-only folder here")
  try:
    with pytest.raises(settings.ConfigError, match=rf"^data.data_dir='{read_only}' is "
                       r"read-only \(.*denies writing\) and does not hold synthetic_seq2seq/copy "
                       r"prepared; prepare it in a writable data_dir first"):
      run_lib.create(_config(data__data_dir=read_only), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
  finally:
    if read_only.endswith("/ro"):
      subprocess.run(["umount", "-l", read_only], check=False)


def _read_only(path: str, mount_point: str, make: bool = False):
  """Makes `mount_point` a read-only view of `path` (a bind mount as root, who ignores
  permissions), or of `path` itself (chmod); None when neither works."""
  if make:
    os.makedirs(path)
  if os.geteuid() != 0:
    for dirpath, _, files in os.walk(path):
      for name in [*files, "."]:
        os.chmod(os.path.join(dirpath, name), 0o555)
    return path
  os.makedirs(mount_point)
  done = subprocess.run(["mount", "--bind", "-o", "ro", path, mount_point], capture_output=True)
  return mount_point if done.returncode == 0 else None


def test_a_read_only_prepared_data_dir_is_just_used(tmp_path):
  cfg = DataConfig(synthetic_train_examples=16, synthetic_eval_examples=4,
                   data_dir=str(tmp_path / "data"))
  prepared = [dict(e) for e in sources.data_source(cfg, "train")]
  read_only = _read_only(str(tmp_path / "data"), str(tmp_path / "ro"))
  if read_only is None:
    pytest.skip("cannot make a read-only folder here")
  try:
    with pytest.raises(OSError):  # it really is read-only
      open(os.path.join(read_only, "probe"), "w").close()
    again = sources.data_source(cfg.replace(data_dir=read_only), "train")
    assert [dict(again[i]) for i in range(len(again))] == prepared
    del again  # its open files would keep the mount busy
  finally:
    if read_only.endswith("/ro"):
      subprocess.run(["umount", "-l", read_only], check=False)


@pytest.mark.parametrize("tool,kwargs,message", [
    ("translate", {"alpha": math.nan}, "--alpha=nan must be a finite number >= 0"),
    ("translate", {"alpha": math.inf}, "--alpha=inf must be a finite number >= 0"),
    ("evaluate", {"alpha": -0.5, "split": "test"}, "--alpha=-0.5 must be a finite number >= 0"),
    ("evaluate", {"limit": -1, "split": "test"}, "--limit=-1 must be >= 0 (0: all lines)"),
])
def test_a_bad_decoding_flag_is_refused(tmp_path, tool, kwargs, message):
  with pytest.raises(commands.UsageError) as e:
    getattr(commands, tool)(str(tmp_path), **kwargs)
  assert str(e.value).startswith(message)


@pytest.mark.parametrize("tool,args", [("translate", ()), ("evaluate", ()), ("average", (1,))])
def test_a_workdir_that_is_a_file_is_named_so(tmp_path, tool, args):
  (tmp_path / "run").write_text("x")
  with pytest.raises(commands.UsageError) as e:
    getattr(commands, tool)(str(tmp_path / "run"), *args)
  assert str(e.value) == f"--workdir={str(tmp_path / 'run')!r} is a file, not a training " \
      "run's directory"
