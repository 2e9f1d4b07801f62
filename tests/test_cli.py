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
    ("experiments.sweep", ["--config.model.nosuch=2", "--grid=model.attention_scale=none"],
     "error: bad config override (in --config.model.nosuch=2)"),
    ("experiments.sweep", ["--grid=model.attention_scale=none,bogus"],
     "grid point attention_scale=bogus,seed=0: invalid TransformerConfig: attention_scale: "
     "unknown attention scale 'bogus'"),
    ("experiments.sweep", ["--grid=model.d_fff=1,2"],
     "--grid=model.d_fff: unknown config key; did you mean model.d_ff?"),
    ("experiments.sweep", ["--grid=model.attention_scale=none", "--tables_only"],
     "error: --tables_only: no run of this sweep has ended in"),
    ("experiments.count_params", ["--vocab_size=0"], "--vocab_size=0 must be positive"),
])
def test_bad_command_lines_fail_in_one_line(tmp_path, module, args, message):
  config = "experiments/configs/dk_study.py" if "sweep" in module else \
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


_PRINT_CONFIG = """
import json, sys
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file("config", None, "", lock_config=True)
flags.FLAGS(sys.argv)
print(json.dumps(flags.FLAGS.config.to_dict()))
"""


def test_every_config_key_is_overridable_from_the_command_line():
  """default_config() holds every key, those whose default is None as typed placeholders
  (config_flags cannot override a plain None)."""
  import json  # noqa: PLC0415

  from transformer import settings  # noqa: PLC0415
  proc = subprocess.run(
      [sys.executable, "-c", _PRINT_CONFIG, "--config=experiments/configs/multi30k.py",
       "--config.model.cross_attention_scale=qk_norm", "--config.data.max_eval_length=90",
       "--config.model.target_vocab_size=8000", "--config.optim.weight_decay=0.1",
       "--config.data.path=data/multi30k", "--config.model.share_embeddings=False",
       "--config.model.head_dim=32", "--config.model.encoder_self_attention_kind=additive"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  raw = json.loads(proc.stdout.strip().splitlines()[-1])
  assert raw["model"]["cross_attention_scale"] == "qk_norm"
  assert raw["model"]["encoder_self_attention_scale"] is None   # unset placeholder
  assert (raw["data"]["max_eval_length"], raw["model"]["target_vocab_size"]) == (90, 8000)
  cfg, data_cfg, optim_cfg, _ = settings.resolve(raw)
  assert settings.model_config(cfg, 8000).scale_policy("cross").kind == "qk_norm"
  assert (raw["model"]["head_dim"], raw["model"]["decoder_self_attention_kind"]) == (32, None)
  assert settings.model_config(cfg, 8000).attention_kind_at("encoder_self") == "additive"
  assert (data_cfg.max_eval_length, optim_cfg.weight_decay) == (90, 0.1)
  assert set(raw["model"]) == set(settings.resolved_config(*settings.resolve(raw))["model"])
