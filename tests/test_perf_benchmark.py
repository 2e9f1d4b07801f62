"""The benchmark harness end to end on the tiny config, and bf16 compute against float32."""

import os
import re
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import benchmark_base
from transformer import benchmark, flops, settings, step_profile
from transformer.config import TransformerConfig
from transformer.model import Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _number(text: str, label: str) -> float:
  line = next(line for line in text.splitlines() if line.strip().startswith(label + ":"))
  return float(re.search(r":\s*([\d,.]+)", line).group(1).replace(",", ""))


def test_harness_runs_two_steps_and_its_figures_agree():
  config = benchmark_base.get_config("tiny")
  lines = []
  figures = benchmark.run(config, steps=2, log=lines.append)
  text = benchmark.report(figures)
  print(text)
  assert len(figures.step_times_s) == 2 and min(figures.step_times_s) > 0
  assert figures.compile_s > 0 and figures.ceiling_flops > 0 and figures.peak_memory_bytes > 0
  assert figures.step_temp_bytes > 0 and figures.step_argument_bytes > 0
  cfg = TransformerConfig.from_mapping(config.model.to_dict())
  assert figures.model_flops_per_step == flops.step_flops(cfg, 8, 16, 16).train
  assert figures.tokens_per_step == 8 * (16 + 16)
  # The tiny preset's count (tests/test_model.py).
  assert figures.parameters == 169_984
  assert "169,984 parameters" in lines[0]
  # The figures agree with each other, unrounded (comparing printed, rounded numbers would
  # depend on how fast the machine is), and the report prints each of them.
  median_s = figures.median_step_s
  assert figures.tokens_per_s == pytest.approx(256 / median_s)
  assert figures.achieved_flops == pytest.approx(figures.model_flops_per_step / median_s)
  assert figures.mfu == pytest.approx(figures.achieved_flops / figures.ceiling_flops)
  printed = {"median step time": f"{median_s * 1e3:.1f} ms", "tokens/s": f"{figures.tokens_per_s:,.0f}",
             "model FLOPs/step": f"{figures.model_flops_per_step / 1e9:.2f} GFLOP",
             "achieved": f"{figures.achieved_flops / 1e9:.2f} GFLOP/s",
             "ceiling": f"{figures.ceiling_flops / 1e9:.2f} GFLOP/s", "MFU": f"{100 * figures.mfu:.1f}%"}
  for label, value in printed.items():
    line = next(x for x in text.splitlines() if x.strip().startswith(label + ":"))
    assert line.split(":", 1)[1].strip().startswith(value), (label, line)
  # On CPU the ceiling is the matmul rate measured in the same process.
  assert figures.ceiling_flops == figures.matmul_flops
  assert len(figures.step_cpu_s) == 2 and figures.cpu_time_mfu > 0
  assert len(figures.step_page_faults) == 2 and min(figures.step_page_faults) >= 0
  assert f"{statistics.median(figures.step_page_faults):,.0f} minor faults per step" in text
  for label in ("compile time", "peak memory", "CPU-time MFU"):
    assert _number(text, label) > 0
  phases = figures.compile_phases_s
  assert set(phases) == {"trace", "lower", "xla"} and min(phases.values()) > 0
  assert figures.fusions > 0 and f"{figures.fusions} XLA fusions" in text


def test_bad_benchmark_config_is_one_line_error():
  config = benchmark_base.get_config("tiny").to_dict()
  config["benchmark"]["sequence_length"] = 3
  with pytest.raises(settings.ConfigError, match="unknown benchmark key.*sequence_length"):
    benchmark.split_config(config)
  config = benchmark_base.get_config("tiny").to_dict()
  config["model"]["vocab_size"] = 0
  with pytest.raises(settings.ConfigError, match="vocab_size"):
    benchmark.split_config(config)
  with pytest.raises(ValueError, match="unknown benchmark variant 'huge'"):
    benchmark_base.get_config("huge")


@pytest.mark.parametrize("variant", ["base", "scan", "big", "tiny"])
def test_every_variant_resolves(variant):
  raw, options = benchmark.split_config(benchmark_base.get_config(variant))
  cfg, _, _, _ = settings.resolve(raw)
  model_cfg = settings.model_config(cfg, raw["model"]["vocab_size"])
  assert model_cfg.max_len >= max(options["source_length"], options["target_length"])
  if variant == "big":
    assert (model_cfg.dtype, model_cfg.param_dtype) == ("bfloat16", "float32")
    assert model_cfg.attention_implementation == "cudnn" and options["target_length"] == 256


def test_cli_rejects_a_bad_value_before_compiling():
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark",
       "--config=experiments/configs/benchmark_base.py:tiny", "--config.benchmark.target_length=0"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: benchmark.target_length=0 must be a positive integer")


def test_gpu_peak_table_matches_device_kinds():
  class Fake:
    def __init__(self, kind):
      self.device_kind = kind
  assert benchmark.gpu_peak(Fake("NVIDIA H100 80GB HBM3")) == 989e12
  assert benchmark.gpu_peak(Fake("NVIDIA H200")) == 989e12
  assert benchmark.gpu_peak(Fake("cpu")) is None


def test_bf16_compute_with_float32_params_stays_close_to_float32():
  """bfloat16 activations and matmul inputs (8-bit mantissa), float32 parameters and softmax.

  Tolerances, from bf16's relative precision 2^-8 ~ 0.4% compounded over the layers:
  logits within 5% of their scale, loss within 1%, gradient directions cosine > 0.99
  (1 + 1 layers, to keep the compilation short).
  """
  f32 = TransformerConfig.tiny(dropout_rate=0.0, num_encoder_layers=1, num_decoder_layers=1)
  bf16 = f32.replace(dtype="bfloat16", param_dtype="float32")
  rng = np.random.default_rng(0)
  src = jnp.asarray(rng.integers(3, 64, (4, 12)), jnp.int32)
  tgt = jnp.asarray(rng.integers(3, 64, (4, 10)), jnp.int32)
  params = jax.jit(Transformer(f32).init)(jax.random.key(0), src, tgt)["params"]

  def loss_and_grads(cfg):
    def loss(p):
      logits = Transformer(cfg).apply({"params": p}, src, tgt)
      assert logits.dtype == jnp.float32
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1)), logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (loss32, logits32), grads32 = loss_and_grads(f32)
  (loss16, logits16), grads16 = loss_and_grads(bf16)
  scale = float(jnp.max(jnp.abs(logits32)))
  assert float(jnp.max(jnp.abs(logits16 - logits32))) < 0.05 * scale
  assert float(loss16) == pytest.approx(float(loss32), rel=1e-2)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))  # float32 Adam state
  flat32 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads32)])
  flat16 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads16)])
  cosine = jnp.dot(flat32, flat16) / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))
  assert float(cosine) > 0.99


def test_compile_only_prints_the_phases_and_runs_no_step():
  out = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark",
       "--config=experiments/configs/benchmark_base.py:tiny", "--compile_only"],
      cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 0, out.stderr
  line = out.stdout.strip().splitlines()[-1]
  m = re.fullmatch(r"compile time: ([\d.]+) s \(trace ([\d.]+) \+ lower ([\d.]+) \+ XLA "
                   r"([\d.]+); [\d.]+ s CPU time of this process; (\d+) XLA fusions\)", line)
  assert m, line
  total, *phases = (float(x) for x in m.groups()[:4])
  assert total == pytest.approx(sum(phases), abs=0.02) and int(m.group(5)) > 0
  assert "median step time" not in out.stdout
  # The pmap backend has no separate trace stage: one figure for tracing and lowering.
  pmap = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark",
       "--config=experiments/configs/benchmark_base.py:tiny", "--compile_only",
       "--config.parallel.backend=pmap"],
      cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
      timeout=300)
  assert pmap.returncode == 0, pmap.stderr
  assert re.search(r"\(trace and lower [\d.]+ \+ XLA [\d.]+;", pmap.stdout), pmap.stdout


def test_self_time_excludes_nested_instructions_and_counts_no_other_event():
  # One thread: a loop (0-100) holding two ops (10-30, 40-90, the second holding a third);
  # an executor event around everything and a pool event inside dot.4 are not instructions:
  # neither counted nor subtracted.
  line = [(0, 200, "ThunkExecutor::Execute"), (0, 100, "while.1"), (10, 20, "fusion.2"),
          (40, 50, "fusion.3"), (50, 10, "dot.4"), (52, 3, "ThreadpoolListener::Record"),
          (120, 30, "fusion.2")]
  times = step_profile.self_times_ns(step_profile.instruction_segments(
      [line, [(0, 5, "fusion.3")]], {"while.1", "fusion.2", "fusion.3", "dot.4"}))
  assert times == {"while.1": 30, "fusion.2": 50, "fusion.3": 45, "dot.4": 10}


def test_innermost_segments_name_each_stretch_by_the_deepest_open_event():
  line = [(0, 100, "while.1"), (10, 20, "fusion.2"), (40, 50, "fusion.3"), (50, 10, "dot.4")]
  assert step_profile.innermost_segments(line) == [
      (0, 10, "while.1"), (10, 30, "fusion.2"), (30, 40, "while.1"), (40, 50, "fusion.3"),
      (50, 60, "dot.4"), (60, 90, "fusion.3"), (90, 100, "while.1")]


def test_running_at_once_counts_overlap_across_threads_and_time_alone():
  # Thread 1: a (0-40), b (60-100, holding a pool event). Thread 2: c (30-70), inside an
  # executor event. Neither of those is an instruction. c runs alone 40-60.
  lines = [[(0, 40, "a"), (60, 40, "b"), (70, 5, "ThreadpoolListener::Record")],
           [(0, 100, "ThunkExecutor::Execute"), (30, 40, "c")]]
  occupancy, alone = step_profile.running_at_once(
      step_profile.instruction_segments(lines, {"a", "b", "c"}))
  assert occupancy == {0: 0, 1: 30 + 20 + 30, 2: 10 + 10}
  assert alone == {"a": 30, "c": 20, "b": 30}
  # A gap with nothing running counts as none.
  occupancy, alone = step_profile.running_at_once(
      step_profile.instruction_segments([[(0, 10, "a"), (30, 10, "b")]], {"a", "b"}))
  assert occupancy == {0: 20, 1: 20, 2: 0} and alone == {"a": 10, "b": 10}


@pytest.mark.parametrize("op_name,shape,expected", [
    ("jit(f)/jvp(Transformer)/Transformer.decode/Transformer.decode_embedded/target_embed.attend/"
     "btm,vm->btv/dot_general", "f32[256,64]{1,0}", step_profile.VOCAB),
    ("jit(f)/transpose(jvp(jit(log_softmax)))/add_any", "f32[4,64]{1,0}", step_profile.VOCAB),
    ("jit(f)/jvp()/reduce_sum", "f32[4,64]{1,0}", step_profile.VOCAB),
    ("jit(f)/transpose(jvp(Transformer))/Transformer.decode/x/decoder_0/ffn_sublayer/norm/mul",
     "f32[4,64,64]", step_profile.NORM),
    ("jit(f)/jvp(Transformer)/Transformer.encode/encoder/encoder_0/attention_sublayer/Dropout_0/"
     "jit(_bernoulli)/lt", "pred[4,64,64]", step_profile.DROPOUT),
    ("jit(f)/jvp(Transformer)/Transformer.encode/encoder/encoder_0/attention_sublayer/"
     "self_attention/bhqk", "f32[4,4,64,64]", step_profile.ATTENTION),
    ("jit(f)/jvp(Transformer)/Transformer.encode/encoder/encoder_0/ffn_sublayer/ffn/inner/dot",
     "f32[256,128]", step_profile.FFN),
    ("jit(f)/jit(_where)/select_n", "f32[1,8000,64]", step_profile.OPTIMIZER),  # Adam, not vocab
    ("jit(f)/transpose(jvp(Transformer))/Transformer.decode/scatter-add", "f32[8000,64]",
     step_profile.VOCAB),  # the embedding's gradient, told by its vocabulary axis
    ("jit(f)/jvp(Transformer)/Transformer.decode/Transformer.decode_embedded/decoder/decoder_0/"
     "ffn_sublayer/ffn/inner/dot_general", "f32[2048,1024]", step_profile.FFN),
    ("jit(f)/jvp(Transformer)/Transformer.decode/Transformer.embed_targets/target_embed/"
     "jit(_take)/gather", "f32[32,64,256]", step_profile.VOCAB),
    ("", "f32[1,8000,64]", step_profile.RUNTIME),
])
def test_instructions_are_attributed_by_name_stack_and_shape(op_name, shape, expected):
  assert step_profile.category(op_name, shape, vocab_size=8000) == expected


def test_profile_attributes_the_traced_steps_op_time(tmp_path):
  config = benchmark_base.get_config("tiny")
  figures = benchmark.run(config, steps=1, log=lambda _: None, profile_dir=str(tmp_path))
  rows = figures.profile.rows
  assert {r.category for r in rows} <= set(step_profile.CATEGORIES)
  assert sum(figures.profile.running.values()) == pytest.approx(1.0)
  assert all(0 <= r.alone_ms_per_step <= r.ms_per_step + 1e-6 for r in rows)
  assert sum(r.share for r in rows) == pytest.approx(1.0)
  by = {r.category: r for r in rows}
  for part in (step_profile.VOCAB, step_profile.ATTENTION, step_profile.FFN,
               step_profile.NORM, step_profile.OPTIMIZER):
    assert by[part].ms_per_step > 0, part
  assert "op time per step" in benchmark.report(figures)
  assert "running at once" in benchmark.report(figures)
