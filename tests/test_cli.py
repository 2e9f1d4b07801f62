"""Entry points: bad flags and config overrides give one line naming them, before any work."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module,args,message", [
    ("experiments.train", ["--config.nosuch=1"],
     "error: bad config override (in --config.nosuch=1): AttributeError"),
    ("experiments.train", ["--config.model.d_model=abc"],
     "error: flag --config.model.d_model=abc: invalid literal for int()"),
    ("experiments.ablate_scale", ["--config.model.nosuch=2", "--scales=none"],
     "error: bad config override (in --config.model.nosuch=2)"),
    ("experiments.ablate_scale", ["--scales=none,bogus"], "unknown attention scale 'bogus'"),
    ("experiments.count_params", ["--vocab_size=0"], "--vocab_size=0 must be positive"),
])
def test_bad_command_lines_fail_in_one_line(tmp_path, module, args, message):
  config = "experiments/configs/scale_ablation.py" if "ablate" in module else \
      "experiments/configs/default.py"
  base = [] if module.endswith("count_params") else [f"--config={config}",
                                                      f"--workdir={tmp_path / 'run'}"]
  proc = subprocess.run([sys.executable, "-m", module, *base, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines()
           if line.strip() and not line.startswith(("I1", "W1"))]
  assert message in "\n".join(lines), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "run").exists()  # nothing written
