"""The scale-ablation sweep on two tiny real runs: tables, pictures, reuse, divergence."""

import csv
import os

import pytest

from train_fixtures import loop_config
from transformer import sweep, sweep_plots
from transformer.train import train_and_evaluate


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  base = loop_config(str(root / "data"), num_train_steps=4, checkpoint_every_steps=4,
                     **{"model.dropout_rate": 0.0})
  calls = []

  def counting_train(config, workdir):
    calls.append(workdir)
    return train_and_evaluate(config, workdir)

  # 1e38 overflows float32 logits to inf: the softmax gives NaN and the run diverges.
  scales = ["inv_sqrt_dk", "constant:1e38"]
  records = sweep.run_sweep(base, str(root / "sweep"), scales, [0], train_fn=counting_train)
  return root / "sweep", base, scales, records, calls, counting_train


def test_runs_are_recorded_finished_or_diverged(swept):
  workdir, _, _, records, calls, _ = swept
  assert len(calls) == 2
  status = {r["policy"]: r["status"] for r in records}
  assert status == {"inv_sqrt_dk": "finished", "constant:1e38": "diverged"}
  diverged = next(r for r in records if r["status"] == "diverged")
  assert "non-finite" in diverged["message"]
  assert os.path.exists(workdir / "inv_sqrt_dk_seed0" / "manifest.json")
  attention = [m for m in sweep.run_metrics(str(workdir / "inv_sqrt_dk_seed0"))
               if m["split"] == "attention"]
  assert attention[0]["step"] == 0 and attention[-1]["step"] == 4  # initialisation and the end
  assert attention[0]["attn/encoder_0/self_attention/logit_std/mean"] > 0


def test_tables_and_pictures(swept):
  workdir, _, _, records, _, _ = swept
  rows = sweep.summarize(records, target_loss=100.0)
  md, path_csv = sweep.write_tables(rows, records, str(workdir), 100.0)
  text = open(md).read()
  assert "| inv_sqrt_dk | 1/1 | 0 | 0 | 1 |" in text
  assert "| constant:1e38 | 0/1 | 1 | 0 | 0 |" in text  # reported, not left out
  with open(path_csv) as f:
    table = list(csv.DictReader(f))
  assert [r["policy"] for r in table] == ["inv_sqrt_dk", "constant:1e38"]
  assert float(table[0]["train_loss_mean"]) > 0 and table[0]["train_loss_n"] == "1"
  assert table[1]["diverged"] == "1" and table[1]["train_loss_n"] == "0"
  assert float(table[0]["steps_to_target_mean"]) == 1.0  # the first logged step is <= 100
  pictures = sweep_plots.plot_sweep(records, str(workdir))
  for name in ("loss_curves.png", "attention_stats.png", "attention_maps.png"):
    path = workdir / name
    assert str(path) in pictures and path.stat().st_size > 5000
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_second_call_reuses_finished_runs(swept):
  workdir, base, scales, records, calls, counting_train = swept
  again = sweep.run_sweep(base, str(workdir), scales, [0], train_fn=counting_train)
  assert len(calls) == 2  # nothing trained again
  assert [r["status"] for r in again] == [r["status"] for r in records]
  changed = loop_config(base.data.data_dir, num_train_steps=4)   # dropout 0.1, not 0.0
  with pytest.raises(ValueError,
                     match=r"holds a run of another config \(model\.dropout_rate: 0\.0 -> 0\.1\)"):
    sweep.run_sweep(changed, str(workdir), scales[:1], [0], train_fn=counting_train)


@pytest.mark.parametrize("scales,seeds,message", [
    (["inv_sqrt_dk", "bogus"], [0], "unknown attention scale 'bogus'"),
    ([], [0], "--scales is empty"),
    (["none", "none"], [0], "--scales repeats a value"),
])
def test_bad_sweep_arguments(scales, seeds, message):
  with pytest.raises(ValueError, match=message):
    sweep.check_sweep_args(scales, seeds)


def test_sweep_refuses_a_base_config_with_per_kind_scales(tmp_path):
  base = loop_config(str(tmp_path), **{"model.cross_attention_scale": "none"})
  with pytest.raises(ValueError, match="sets model.cross_attention_scale"):
    sweep.run_config(base, "inv_dk", 0)
  assert sweep.run_config(loop_config(str(tmp_path)), "inv_dk", 3).model.attention_scale == "inv_dk"
