"""The sweep on tiny real runs: names, tables, pivot, pictures, reuse, resume, refusal, the
dry run, divergence, bad grids, and the submitit launcher with real subprocess jobs."""

import csv
import json
import os
import re

import pytest

from train_fixtures import loop_config
from transformer import settings, sweep, sweep_grid, sweep_plots, sweep_tables
from transformer.train import train_and_evaluate

# 1e38 overflows float32 logits to inf: the softmax gives NaN and the run diverges. The
# step counts share compiled programs (cached), so 8 runs compile only twice.
GRID = ["model.attention_scale=inv_sqrt_dk,constant:1e38", "num_train_steps=2,4"]
SEEDS = [0, 1]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """The seeds of a point compile the same programs: a persistent cache shares them (also
  with the submitit jobs, which inherit the environment). Same programs, same bits."""
  import jax  # noqa: PLC0415
  path = str(tmp_path_factory.mktemp("jax_cache"))
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  with pytest.MonkeyPatch.context() as env:
    env.setenv("JAX_COMPILATION_CACHE_DIR", path)
    env.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    env.setenv("JAX_PLATFORMS", "cpu")
    yield
  jax.config.update("jax_compilation_cache_dir", previous)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def base_config(data_dir, **overrides):
  return loop_config(data_dir, num_train_steps=4, checkpoint_every_steps=4, eval_every_steps=4,
                     **{"model.dropout_rate": 0.0, **overrides})


class Counting:
  """train_and_evaluate, counting the run directories it trains."""

  def __init__(self):
    self.calls = []

  def __call__(self, config, workdir):
    self.calls.append(os.path.basename(workdir))
    return train_and_evaluate(config, workdir)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("sweep"))
  train = Counting()
  records = sweep.run_sweep(sweep_grid.plan(base_config(data_dir), GRID, SEEDS), workdir,
                            train_fn=train)
  return workdir, records, train


def test_runs_are_named_by_their_values_and_recorded(swept):
  workdir, records, train = swept
  names = [f"attention_scale={s},num_train_steps={n},seed={seed}"
           for s in ("inv_sqrt_dk", "constant-1e38") for n in (2, 4) for seed in SEEDS]
  assert train.calls == names  # the product, seeds innermost; ':' sanitised
  assert sorted(os.listdir(workdir)) == sorted(names)
  run = records[3]
  assert run["name"] == "attention_scale=inv_sqrt_dk,num_train_steps=4"
  assert run["values"] == {"model.attention_scale": "inv_sqrt_dk", "num_train_steps": 4}
  assert (run["seed"], run["run_dir"]) == (1, os.path.join(workdir, names[3]))
  assert (run["config"]["num_train_steps"], run["config"]["seed"]) == (4, 1)
  status = {(r["values"]["model.attention_scale"], r["values"]["num_train_steps"], r["seed"]):
            r["status"] for r in records}
  assert status == {(s, n, seed): "finished" if s == "inv_sqrt_dk" else "diverged"
                    for s in ("inv_sqrt_dk", "constant:1e38") for n in (2, 4) for seed in SEEDS}
  diverged = [r for r in records if r["status"] == "diverged"]
  assert all("non-finite" in r["message"] for r in diverged)
  with open(os.path.join(diverged[0]["run_dir"], sweep.STATUS_FILE)) as f:
    on_disk = json.load(f)
  assert on_disk["status"] == "diverged" and on_disk["config"]["model"]["attention_scale"] == \
      "constant:1e38"
  attention = [m for m in sweep_tables.run_metrics(run["run_dir"]) if m["split"] == "attention"]
  assert attention[0]["step"] == 0 and attention[-1]["step"] == 4  # initialisation and the end


def test_tables_pivot_and_pictures(swept):
  workdir, records, _ = swept
  rows = sweep_tables.summarize(records, target_loss=100.0)
  md, path_csv = sweep_tables.write_tables(rows, records, workdir, 100.0, metric="eval_loss")
  with open(path_csv) as f:
    reader = csv.DictReader(f)
    table = list(reader)
  assert reader.fieldnames[:7] == ["model.attention_scale", "num_train_steps", "runs",
                                   "finished", "diverged", "failed", "reached_target"]
  assert {"eval_loss_mean", "eval_loss_std", "eval_loss_n", "steps_to_target_mean"} <= \
      set(reader.fieldnames)
  assert [(r["model.attention_scale"], r["num_train_steps"]) for r in table] == [
      ("inv_sqrt_dk", "2"), ("inv_sqrt_dk", "4"), ("constant:1e38", "2"), ("constant:1e38", "4")]
  finals = {}
  for r in records:
    if r["status"] == "finished":
      loss = sweep_tables.final_value(sweep_tables.run_metrics(r["run_dir"]), "eval", "loss")
      finals.setdefault(r["values"]["num_train_steps"], []).append(loss)
  for row in table[:2]:
    counts = (row["runs"], row["finished"], row["diverged"], row["eval_loss_n"])
    assert counts == ("2", "2", "0", "2")
    a, b = finals[int(row["num_train_steps"])]
    assert float(row["eval_loss_mean"]) == pytest.approx((a + b) / 2)
    assert float(row["eval_loss_std"]) == pytest.approx(abs(a - b) / 2 ** 0.5)
  for row in table[2:]:  # reported, not left out
    assert (row["finished"], row["diverged"], row["eval_loss_n"]) == ("0", "2", "0")
  text = open(md).read()
  assert "| model.attention_scale | num_train_steps | finished | diverged | failed |" in text
  cell = r"\d[\d.e+-]* ± \d[\d.e+-]*"
  assert re.search(rf"\| inv_sqrt_dk \| 2 \| 2/2 \| 0 \| 0 \| 2 \| {cell} \|", text)
  assert "| constant:1e38 | 4 | 0/2 | 2 | 0 | 0 | n/a |" in text
  pivot = text[text.index("## eval_loss: model.attention_scale (rows) × num_train_steps "
                          "(columns)"):]
  assert "| model.attention_scale \\ num_train_steps | 2 | 4 |" in pivot
  mean, std = float(table[0]["eval_loss_mean"]), float(table[0]["eval_loss_std"])
  assert re.search(rf"\| inv_sqrt_dk \| {re.escape(f'{mean:.4g} ± {std:.2g}')} \| {cell} \|",
                   pivot)
  assert "| constant:1e38 | n/a | n/a |" in pivot
  assert "| attention_scale=constant-1e38,num_train_steps=2,seed=0 | diverged | non-finite" in text

  pictures = sweep_plots.plot_sweep(records, rows, workdir, metric="eval_loss")
  names = ["loss_curves.png", "attention_stats.png", "eval_loss_vs_num_train_steps.png",
           "attention_maps.png"]
  assert sorted(os.path.basename(p) for p in pictures) == sorted(names)  # no string key plot
  for name in names:
    path = os.path.join(workdir, name)
    assert 5000 < os.path.getsize(path) < 150_000, name
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_one_pivot_per_combination_of_the_other_keys():
  seeds = {7: 0, 5: 1}  # no finished seed, one finished seed; the others two
  rows = [{"values": {"a": a, "b": b, "c": c}, "eval_loss": (10.0 * i, 0.5, seeds.get(i, 2))}
          for i, (a, b, c) in enumerate((a, b, c) for a in (1, 2) for b in ("x", "y")
                                        for c in (None, True))]
  text = "\n".join(sweep_tables.pivots(rows, ["a", "b", "c"], "eval_loss"))
  assert text.startswith("## eval_loss: a (rows) × b (columns)")
  none, true = text.index("c=None:"), text.index("c=True:")
  assert text.count("| a \\ b | x | y |") == 2
  assert text.index("| 1 | 0 ± 0.5 | 20 ± 0.5 |") in range(none, true)
  assert text.index("| 2 | 50 (n=1) | n/a |") > true  # one seed: no spread; none: n/a
  assert sweep_tables.pivots(rows, ["a"], "eval_loss") == []


@pytest.mark.parametrize("values,base", [
    ([32, 64, 128], 2), ([0.1, 1.0, 10.0], 10), ([1, 9, 27], 3), ([3, 200], 10),
    ([1e-4, 3e-4, 1e-3], None), ([0.1, 0.3], None), ([0, 1, 2], None)])
def test_log_axis_for_powers_or_wide_spans(values, base):
  assert sweep_plots.log_base(values) == base


def test_second_call_reuses_and_a_changed_config_is_refused_before_training(swept, data_dir):
  workdir, records, train = swept
  again = sweep.run_sweep(sweep_grid.plan(base_config(data_dir), GRID, SEEDS), workdir,
                          train_fn=train)
  assert len(train.calls) == 8  # nothing trained again, diverged runs included
  assert [(r["run_dir"], r["status"]) for r in again] == [(r["run_dir"], r["status"])
                                                          for r in records]
  changed = sweep_grid.plan(base_config(data_dir, **{"model.dropout_rate": 0.1}),
                            ["model.attention_scale=inv_sqrt_dk", "num_train_steps=3,4"], [0])
  with pytest.raises(ValueError,
                     match=r"holds a run of another config \(model\.dropout_rate: 0\.0 -> 0\.1\)"):
    sweep.run_sweep(changed, workdir, train_fn=train)
  assert len(train.calls) == 8  # refused before the new 3-step point trained
  assert not os.path.exists(os.path.join(workdir,
                                         "attention_scale=inv_sqrt_dk,num_train_steps=3,seed=0"))


def test_dry_run_lists_states_and_an_interrupted_run_resumes(swept, data_dir):
  workdir, _, train = swept
  interrupted = os.path.join(workdir, "attention_scale=inv_sqrt_dk,num_train_steps=4,seed=1")
  os.remove(os.path.join(interrupted, sweep.STATUS_FILE))  # as if killed after its checkpoint
  points = sweep_grid.plan(base_config(data_dir), GRID, [0, 1, 2])
  text = sweep.describe(points, workdir)
  lines = text.splitlines()
  assert lines[0] == (f"12 runs in {workdir}: 3 finished, 4 diverged, 1 interrupted, 4 new")
  by_dir = {line.split()[1]: line.split()[0] for line in lines[1:]}
  assert by_dir[os.path.basename(interrupted)] == "interrupted"
  assert by_dir["attention_scale=inv_sqrt_dk,num_train_steps=2,seed=0"] == "finished"
  assert by_dir["attention_scale=constant-1e38,num_train_steps=4,seed=1"] == "diverged"
  assert [d for d, s in by_dir.items() if s == "new"] == [p.run_name for p in points
                                                         if p.seed == 2]
  line = next(line for line in lines if "interrupted" in line.split()[:1])
  assert "resumes from step 4" in line and "num_train_steps=4" in line and "seed=1" in line
  assert "reused, not rerun" in next(line for line in lines if "diverged" in line.split()[:1])
  assert len(train.calls) == 8 and not os.path.exists(os.path.join(workdir, points[2].run_name))

  records = sweep.run_sweep(sweep_grid.plan(base_config(data_dir), GRID, SEEDS), workdir,
                            train_fn=train)
  assert train.calls[8:] == [os.path.basename(interrupted)]  # only that run, resumed
  assert next(r for r in records if r["run_dir"] == interrupted)["status"] == "finished"
  with open(os.path.join(interrupted, "manifest.json")) as f:
    assert json.load(f)["resumed_from_step"] == 4


def test_tables_of_the_runs_that_have_ended_train_and_decode_nothing(swept, data_dir, tmp_path,
                                                                     monkeypatch):
  workdir, records, train = swept
  calls = len(train.calls)
  points = sweep_grid.plan(base_config(data_dir), GRID, [0, 1, 2])  # seed 2: never run
  saved = {"bleu": 12.5, "chrf": 40.0, "split": "test", "beam_size": 1}
  with open(os.path.join(records[0]["run_dir"], sweep.score_file("test", 1)), "w") as f:
    json.dump(saved, f)
  from transformer import commands  # noqa: PLC0415
  monkeypatch.setattr(commands, "evaluate", lambda *a, **k: pytest.fail("decoded"))
  ended = sweep.ended_records(points, workdir, ("test", 1))
  os.remove(os.path.join(records[0]["run_dir"], sweep.score_file("test", 1)))
  assert [(r["run_dir"], r["status"]) for r in ended] == [(r["run_dir"], r["status"])
                                                          for r in records]
  assert ended[0]["score"] == saved and all("score" not in r for r in ended[1:])
  assert len(train.calls) == calls
  assert not any(os.path.exists(os.path.join(workdir, p.run_name)) for p in points
                 if p.seed == 2)
  rows = sweep_tables.summarize(ended, 1.0)
  assert len(rows) == 4 and all(row["runs"] == 2 for row in rows)


def test_values_take_the_type_of_their_key(data_dir):
  points = sweep_grid.plan(base_config(data_dir), [
      "model.cross_attention_scale=None,none", "optim.learning_rate=1e-3",
      "model.share_embeddings=false", "model.vocab_size=0", "data.vocab_size=None,40"], [3])
  assert [p.values["model.cross_attention_scale"] for p in points] == [None, None, "none", "none"]
  assert {type(p.values["optim.learning_rate"]) for p in points} == {float}
  assert points[1].run_name == ("cross_attention_scale=None,learning_rate=0.001,"
                                "share_embeddings=False,model.vocab_size=0,data.vocab_size=40,"
                                "seed=3")  # a shared last component: the full keys
  assert points[1].config["data"]["vocab_size"] == 40 and points[0].config["seed"] == 3
  assert points[0].config["model"]["share_embeddings"] is False


def test_keys_varied_together_make_families(data_dir):
  """A family grid: attention kind and scale together (additive takes no scale policy, so
  the product of the two keys would hold invalid points), times a numeric key."""
  points = sweep_grid.plan(base_config(data_dir), [
      "model.attention_kind+model.attention_scale=dot_product/inv_sqrt_dk,dot_product/none,"
      "additive/inv_sqrt_dk", "model.d_ff=32,64"], [0])
  assert [p.run_name for p in points][:3] == [
      "attention_kind=dot_product,attention_scale=inv_sqrt_dk,d_ff=32,seed=0",
      "attention_kind=dot_product,attention_scale=inv_sqrt_dk,d_ff=64,seed=0",
      "attention_kind=dot_product,attention_scale=none,d_ff=32,seed=0"]
  assert points[-1].axes == {"model.attention_kind+model.attention_scale": "additive/inv_sqrt_dk",
                            "model.d_ff": 64}  # one axis of the tables, a string
  assert len(points) == 6 and points[-1].values == {
      "model.attention_kind": "additive", "model.attention_scale": "inv_sqrt_dk",
      "model.d_ff": 64}
  assert points[-1].config["model"]["attention_kind"] == "additive"


@pytest.mark.parametrize("overrides,grid,message", [
    ({}, ["model.attention_kind+model.attention_scale=dot_product/none,additive"],
     r"'additive' has 1 value\(s\) for 2 keys; join a key's values with '/'"),
    ({}, ["model.d_ff+model.d_ff=32/32"], r"--grid gives model.d_ff twice"),
    ({}, ["model.d_fff=32"], r"--grid=model.d_fff: unknown config key; did you mean model.d_ff\?"),
    ({}, ["data.dropout_rate=0.1"], r"did you mean model.dropout_rate\?"),
    ({}, ["model.zzz=1"], r"unknown config key; valid keys of model: model.activation, "),
    ({}, ["model=1"], r"--grid=model: a config section, not a key; sweep one of its keys: model\."),
    ({}, ["model.d_ff=abc"], r"--grid=model.d_ff: 'abc' is not an int \(the key's type\)"),
    ({}, ["model.share_embeddings=yes"], r"'yes' is not a bool"),
    ({}, ["model.d_ff="], r"--grid=model.d_ff= has no values"),
    ({}, ["model.d_ff"], r"--grid=model.d_ff: expected KEY=V1,V2,..."),
    ({}, ["model.d_ff=32,64,32"], r"--grid=model.d_ff repeats a value: 32,64,32"),
    ({}, ["optim.learning_rate=1e-3,0.001"], r"repeats a value"),
    ({}, ["model.d_ff=32", "model.d_ff=64"], r"--grid gives model.d_ff twice"),
    ({}, ["seed=0,1"], r"--grid=seed: give the seeds with --seeds"),
    ({"model.cross_attention_scale": "none"}, ["model.attention_scale=inv_dk"],
     r"the base config sets model.cross_attention_scale, which override model.attention_scale"),
    ({}, ["model.num_heads=2,3"],
     r"grid point num_heads=3,seed=0: invalid TransformerConfig: d_model=32 is not divisible "),
    ({}, ["model.attention_kind=dot_product,additive", "model.attention_scale=none"],
     r"grid point attention_kind=additive,attention_scale=none,seed=0: .*means nothing here"),
    ({}, ["model.head_dim=8,0"], r"grid point head_dim=0,seed=0: .*head_dim=0 must be a positive"),
    ({}, ["model.attention_scale=inv_sqrt_dk,bogus"],
     r"grid point attention_scale=bogus,seed=0: .*unknown attention scale 'bogus'"),
])
def test_bad_grids_fail_in_one_line_before_anything_runs(tmp_path, overrides, grid, message):
  with pytest.raises(sweep_grid.GridError, match=message) as error:
    sweep_grid.plan(base_config(str(tmp_path), **overrides), grid, [0])
  assert "\n" not in str(error.value)
  assert not os.listdir(tmp_path)  # nothing prepared or written


@pytest.mark.parametrize("seeds,message", [(["0", "x"], "--seeds must be integers"),
                                           ([], "--seeds is empty"),
                                           (["1", "1"], "--seeds repeats a value")])
def test_bad_seeds(seeds, message):
  with pytest.raises(sweep_grid.GridError, match=message):
    sweep_grid.parse_seeds(seeds)


def test_submitit_launcher_runs_each_point_as_a_subprocess_job(tmp_path, data_dir):
  """submitit's local executor here (no SLURM): real subprocesses running `run_one`. A job
  that crashes before writing a status (batch 6 on 4 devices: a ConfigError in training)
  is reported as failed with its error, and runs again next time."""
  base = base_config(data_dir)
  workdir = str(tmp_path / "sweep")
  points = sweep_grid.plan(base, ["batch_size=8,6"], [0])
  records = sweep.run_sweep(points, workdir, launcher="submitit",
                            submitit_options=dict(timeout_min=10, array_parallelism=2))
  assert [r["status"] for r in records] == ["finished", "failed"], records
  assert records[0]["config"] == settings.resolved_config(*settings.resolve(points[0].config))
  assert sweep_tables.final_value(sweep_tables.run_metrics(records[0]["run_dir"]), "test",
                                  "loss") > 0
  failed = records[1]["message"]
  assert failed.startswith("submitit job ") and "ended without a status" in failed
  assert "batch_size=6 is not divisible by the device count 4" in failed
  assert os.path.isdir(os.path.join(workdir, "submitit"))
  assert [sweep.run_state(p, workdir)["state"] for p in points] == ["finished", "new"]

  train = Counting()
  again = sweep.run_sweep(sweep_grid.plan(base, ["batch_size=8"], [0]), workdir, train_fn=train)
  assert train.calls == [] and again[0]["status"] == "finished"  # reused in this process


def _one_point(data_dir, tmp_path):
  point = sweep_grid.plan(base_config(data_dir), [], [0])[0]
  directory = str(tmp_path / point.run_name)
  os.makedirs(directory)
  return point, directory


def test_a_run_is_scored_as_it_finishes_and_the_score_outlives_its_checkpoints(
    tmp_path, data_dir, monkeypatch):
  """--score_split decodes each run when it finishes; a study's record without checkpoints
  (a lent machine's disk gone) is still reused, tabulated and never decoded again."""
  import shutil  # noqa: PLC0415
  point, directory = _one_point(data_dir, tmp_path)
  record = sweep.run_one(point, directory, train_and_evaluate, ("test", 1))
  score = json.load(open(os.path.join(directory, "score_test_beam1.json")))
  assert record["status"] == "finished" and score["lines"] == 16 and score["split"] == "test"
  shutil.rmtree(os.path.join(directory, "checkpoints"))
  from transformer import commands  # noqa: PLC0415
  monkeypatch.setattr(commands, "evaluate", lambda *a, **k: pytest.fail("decoded twice"))
  again = sweep.run_sweep([point], str(tmp_path), train_fn=lambda *a: pytest.fail("retrained"),
                          score=("test", 1))
  assert sweep.score_runs(again, "test")[0]["score"] == score


def test_a_finished_run_continues_to_a_new_step_count(tmp_path, data_dir):
  """num_train_steps is not an identity key: training continues a run to the new count, so
  the sweep must not reuse a run that finished at another one."""
  point, directory = _one_point(data_dir, tmp_path)
  recorded = settings.resolved_config(*settings.resolve(point.config))
  with open(os.path.join(directory, sweep.STATUS_FILE), "w") as f:
    json.dump({"status": "finished", "message": "",
               "config": {**recorded, "num_train_steps": 2}}, f)
  calls = []
  record = sweep.run_one(point, directory, lambda config, workdir: calls.append(workdir))
  assert calls == [directory] and record["status"] == "finished"
  sweep.run_one(point, directory, lambda config, workdir: calls.append(workdir))
  assert calls == [directory]  # now it finished at this count: reused


def test_a_submitit_time_limit_leaves_the_run_to_resume(tmp_path, data_dir):
  """submitit raises UncompletedJobError in a job at its time limit: not a failed run."""
  from submitit.core.utils import UncompletedJobError  # noqa: PLC0415
  point, directory = _one_point(data_dir, tmp_path)

  def timed_out(config, workdir):
    raise UncompletedJobError("Job not requeued because: timed-out and not checkpointable.")

  with pytest.raises(UncompletedJobError):
    sweep.run_one(point, directory, timed_out)
  assert not os.path.exists(os.path.join(directory, sweep.STATUS_FILE))
  assert sweep.run_state(point, str(tmp_path))["state"] == "new"


def _run_with_init(tmp_path, d_k, kind, scale, seed, logit_std):
  """A run directory whose step-0 attention record has this logit std (two sites)."""
  directory = tmp_path / f"head_dim={d_k},{kind},{scale},seed={seed}"
  directory.mkdir()
  record = {"step": 0, "split": "attention"}
  for site in ("encoder_0/self_attention", "decoder_0/cross_attention"):
    record.update({f"attn/{site}/logit_std/mean": logit_std,
                   f"attn/{site}/entropy_mean/mean": 1.0 + seed,
                   f"attn/{site}/grad_norm_logits/mean": 0.01,
                   f"attn/{site}/grad_norm_query/mean": 2.0,
                   f"attn/{site}/grad_norm_key/mean": 3.0})
  with open(directory / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 0, "split": "train", "loss": 3.0}) + "\n")
    f.write(json.dumps(record) + "\n")
  family = f"{kind}/{scale}"
  return {"name": f"{d_k},{family}", "run_dir": str(directory), "status": "finished",
          "seed": seed, "axes": {"model.head_dim": d_k,
                                 "model.attention_kind+model.attention_scale": family},
          "config": {"model": {"attention_kind": kind, "attention_scale": scale}}}


def test_step_0_statistics_against_d_k_and_the_fitted_theory(tmp_path):
  """Logit stds made exactly c sqrt(d_k) s(d_k) (c = 0.7): the fit recovers c from the
  three scaled families together; qk_norm and additive have no theory line."""
  exponents = {"none": 0.5, "inv_sqrt_dk": 0.0, "inv_dk": -0.5}
  records = []
  for kind, scale in [("dot_product", s) for s in (*exponents, "qk_norm")] + [
      ("additive", "inv_sqrt_dk")]:
    for d_k in (16, 64, 256):
      for seed in (0, 1):
        std = 0.7 * d_k ** exponents[scale] if kind == "dot_product" and scale in exponents \
            else 5.0
        records.append(_run_with_init(tmp_path, d_k, kind, scale, seed, std))
  keys = ["model.head_dim", "model.attention_kind+model.attention_scale"]
  lines = sweep_plots.init_statistics(records, keys)
  assert [l["label"] for l in lines] == [f"{k}/{s}" for k, s in (
      ("dot_product", "none"), ("dot_product", "inv_sqrt_dk"), ("dot_product", "inv_dk"),
      ("dot_product", "qk_norm"), ("additive", "inv_sqrt_dk"))]
  assert [l["exponent"] for l in lines] == [0.5, 0.0, -0.5, None, None]
  x, mean, std = lines[0]["stats"]["logit_std"]
  assert x.tolist() == [16, 64, 256] and mean == pytest.approx([2.8, 5.6, 11.2])
  assert std.tolist() == [0.0, 0.0, 0.0]
  _, entropy, entropy_std = lines[3]["stats"]["entropy_mean"]  # seeds 0, 1: 1 and 2 nats
  assert entropy.tolist() == [1.5] * 3 and entropy_std == pytest.approx([2 ** -0.5] * 3)
  assert sweep_plots.theory_constant(lines) == pytest.approx(0.7)
  path = sweep_plots._at_init(sweep_plots.attention_maps.pyplot(), records, keys, str(tmp_path))
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) < 200_000


def test_a_split_is_scored_once_per_finished_run(swept, data_dir, monkeypatch, tmp_path):
  workdir, records, _ = swept
  scored = sweep.score_runs(records, "test", beam_size=1)
  finished = [r for r in scored if r["status"] == "finished"]
  assert len(finished) == 4 and all("score" not in r for r in scored if r not in finished)
  for r in finished:
    on_disk = json.load(open(os.path.join(r["run_dir"], "score_test_beam1.json")))
    assert on_disk == r["score"] and on_disk["split"] == "test" and on_disk["lines"] == 16
    assert 0.0 <= on_disk["bleu"] <= 100.0 and "nrefs:1" in on_disk["bleu_signature"]
  from transformer import commands  # noqa: PLC0415
  monkeypatch.setattr(commands, "evaluate", lambda *a, **k: pytest.fail("decoded twice"))
  assert sweep.score_runs(records, "test", beam_size=1) == scored  # read back, not decoded
  rows = sweep_tables.summarize(scored, target_loss=100.0)
  bleus = [r["score"]["bleu"] for r in finished[:2]]
  assert rows[0]["score_bleu"][::2] == (pytest.approx(sum(bleus) / 2), 2)
  assert rows[2]["score_bleu"][2] == 0  # diverged: no score
  md, _ = sweep_tables.write_tables(rows, scored, str(tmp_path), 100.0)
  assert "score_*: split 'test' decoded once after training (greedy); nrefs:1" in open(md).read()
  with pytest.raises(ValueError, match=r"^--score_split=nosuch: .*no split 'nosuch'"):
    sweep.check_score_split(sweep_grid.plan(base_config(data_dir), [], [0])[0], "nosuch")
