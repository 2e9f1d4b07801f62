"""Training-step throughput: the real training step on synthetic batches, against a ceiling.

The step benchmarked is the one `experiments.train` runs: `step.make_train_step` with
the optimizer of `optim.make_optimizer`, mapped by `parallel.DataParallel`, built from
the same experiment config (`settings.resolve`). Only the data differ: random token
ids of the configured shapes, with no padding, so every position is a real token.

MFU (model FLOPs utilisation) = model FLOPs per step (`transformer.flops`) / step
time / ceiling, where the ceiling is
  CPU: the dense float32 matmul rate this process measures itself (a large jitted
       matmul, median of repeats sampled between the timed steps, so that both see
       the same machine load);
  GPU: the device's published dense bf16 peak, times the number of devices.
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transformer import flops, optim, parallel, settings, step_profile
from transformer import step as step_lib
from transformer.model import Transformer

# Published dense (no sparsity) bf16 peaks, FLOP/s, by jax Device.device_kind prefix.
GPU_BF16_PEAK = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA H800": 989e12,
                 "NVIDIA GH200": 989e12, "NVIDIA A100": 312e12, "NVIDIA L4": 121e12}
# Benchmark options under config.benchmark (the rest is an ordinary experiment config).
DEFAULTS = dict(source_length=64, target_length=64, warmup_steps=2, matmul_size=2048,
                matmul_repeats=10)
PROFILE_STEPS = 3  # steps traced with profile_dir


@dataclasses.dataclass
class Figures:
  """Everything the benchmark measures; times in seconds, rates per second."""
  device: str
  num_devices: int
  parameters: int
  batch: int
  source_length: int
  target_length: int
  compile_s: float
  compile_cpu_s: float           # this process's CPU time while compiling
  compile_phases_s: dict         # {'trace', 'lower', 'xla'}: wall seconds of each phase
  fusions: int                   # XLA fusions in the compiled step
  step_times_s: list[float]
  step_cpu_s: list[float]       # this process's CPU seconds per step (all threads)
  step_page_faults: list[int]   # this process's minor page faults per step (host memory)
  model_flops_per_step: int
  ceiling_flops: float          # FLOP/s the MFU is measured against
  ceiling_kind: str             # 'measured float32 matmul' or 'published bf16 peak'
  matmul_flops: float           # the measured matmul rate (also on GPU, for reference)
  matmul_cpu_flops: float       # the same per CPU second of this process
  peak_memory_bytes: int
  peak_memory_kind: str
  step_temp_bytes: int          # XLA's memory analysis of the compiled step: temporaries
  step_argument_bytes: int      # ... and arguments (state, batch), per device
  profile: Any = None           # step_profile.Profile (with profile_dir)

  @property
  def median_step_s(self) -> float:
    return statistics.median(self.step_times_s)

  @property
  def tokens_per_step(self) -> int:
    return self.batch * (self.source_length + self.target_length)

  @property
  def tokens_per_s(self) -> float:
    return self.tokens_per_step / self.median_step_s

  @property
  def achieved_flops(self) -> float:
    return self.model_flops_per_step / self.median_step_s

  @property
  def mfu(self) -> float:
    return self.achieved_flops / self.ceiling_flops

  @property
  def cpu_time_mfu(self) -> float:
    """Model FLOPs per CPU second of the step over the matmul's, which time slicing by
    other processes on shared cores does not change. Idle cores inside the step do not
    count against it, so it is an upper bound on the wall-clock MFU of an idle machine."""
    return self.model_flops_per_step / statistics.median(self.step_cpu_s) / self.matmul_cpu_flops


def split_config(config: Any) -> tuple[Any, dict[str, Any]]:
  """(the experiment config without `benchmark`, the benchmark options); one-line errors."""
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  options = {**DEFAULTS, **dict(raw.pop("benchmark", None) or {})}
  unknown = sorted(set(options) - set(DEFAULTS))
  if unknown:
    raise settings.ConfigError(f"unknown benchmark key(s): {', '.join(unknown)}; "
                               f"valid: {', '.join(sorted(DEFAULTS))}")
  for name, value in options.items():
    if not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
      raise settings.ConfigError(f"benchmark.{name}={value!r} must be a positive integer")
  if not (raw.get("model") or {}).get("vocab_size"):
    raise settings.ConfigError("model.vocab_size must be set (> 0): the benchmark has no tokenizer")
  return raw, options


def synthetic_batch(rng: np.random.Generator, batch: int, source_length: int,
                    target_length: int, vocab_size: int, decoder_only: bool) -> dict:
  """Random ids in [3, vocab) (never pad, BOS or EOS): full rows, every token counts."""
  low = min(3, vocab_size - 1)
  out = {"targets": rng.integers(low, vocab_size, (batch, target_length), dtype=np.int32)}
  if not decoder_only:
    out["inputs"] = rng.integers(low, vocab_size, (batch, source_length), dtype=np.int32)
  return out


def _timed(fn, *args) -> tuple[float, float]:
  """(wall seconds, this process's CPU seconds) of fn(*args), waited for."""
  wall, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - wall, time.process_time() - cpu


def matmul_fn(size: int, dtype: Any, device: jax.Device | None = None):
  """() -> (FLOPs, wall s, CPU s) of one jitted chain of [size, size] x [size, size] matmuls."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.device_put(jax.random.normal(k, (size, size), dtype), device) for k in keys)
  # Chained a@b@...: several matmuls per dispatch so the dispatch overhead stays negligible.
  chain = 4
  def f(x, y):
    for _ in range(chain):
      x = jnp.dot(x, y, preferred_element_type=dtype) * jnp.asarray(size ** -0.5, dtype)
    return x
  matmul = jax.jit(f).lower(a, b).compile()
  _timed(matmul, a, b)  # warm-up
  return lambda: (chain * 2 * size ** 3,) + _timed(matmul, a, b)


def gpu_peak(device: jax.Device) -> float | None:
  for prefix, peak in GPU_BF16_PEAK.items():
    if device.device_kind.startswith(prefix):
      return peak
  return None


def peak_memory(devices: list[jax.Device]) -> tuple[int, str]:
  """Device allocator peak where the backend reports one (GPU), else the process max RSS."""
  stats = [d.memory_stats() or {} for d in devices]
  if all("peak_bytes_in_use" in s for s in stats):
    return max(s["peak_bytes_in_use"] for s in stats), "device peak_bytes_in_use (max over devices)"
  # Linux reports ru_maxrss in KiB.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


@dataclasses.dataclass
class Setup:
  """The mapped training step and its first inputs, as the training loop would build them."""
  model_cfg: Any
  dp: parallel.DataParallel
  train_step: Any       # (state, batch, rng) -> (state, metrics), not yet compiled
  state: Any
  batch: dict
  rng: np.ndarray
  parameters: int
  batch_size: int
  options: dict


def prepare(config: Any) -> Setup:
  """Builds the training step of `config` on a synthetic batch; raises ConfigError."""
  raw, opts = split_config(config)
  cfg, _, optim_cfg, backend = settings.resolve(raw)
  settings.check_devices(cfg, backend)
  model_cfg = settings.model_config(cfg, raw["model"]["vocab_size"])
  model = Transformer(model_cfg)
  tx, schedule = optim.make_optimizer(optim_cfg, model_cfg.d_model, cfg.num_train_steps)
  lr_fn = lambda s: optim.learning_rate_at(schedule, optim_cfg, s)  # noqa: E731
  dp = parallel.DataParallel(backend)
  train_step = dp.map_train_step(step_lib.make_train_step(model, tx, lr_fn, cfg.label_smoothing))
  src, tgt = opts["source_length"], opts["target_length"]
  host_batch = synthetic_batch(np.random.default_rng(cfg.seed), cfg.batch_size, src, tgt,
                               model_cfg.output_vocab_size, model_cfg.decoder_only)
  init_key, dropout_key = jax.random.split(jax.random.key(cfg.seed))
  init_state = jax.jit(functools.partial(step_lib.init_state, model, tx, source_length=src,
                                         target_length=tgt))
  n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(init_state, init_key).params))
  return Setup(model_cfg=model_cfg, dp=dp, train_step=train_step,
               state=dp.put_replicated(init_state(init_key)), batch=dp.put_batch(host_batch),
               rng=np.asarray(jax.random.key_data(dropout_key)), parameters=int(n_params),
               batch_size=cfg.batch_size, options=opts)


def compile_step(setup: Setup) -> tuple[Any, float, float, dict[str, float]]:
  """(compiled step, wall seconds, this process's CPU seconds, wall seconds per phase).

  The phases are JAX tracing, lowering to StableHLO, and XLA's compilation ('trace' is
  absent for the pmap backend, whose step has no separate trace stage: its 'lower'
  includes tracing). The CPU seconds say how much of the wall time was the compiler's
  own work when other processes share the cores.
  """
  args = (setup.state, setup.batch, setup.rng)
  wall, cpu = time.perf_counter(), time.process_time()
  phases = {}
  if hasattr(setup.train_step, "trace"):   # jit(shard_map)
    traced = setup.train_step.trace(*args)
    phases["trace"] = time.perf_counter() - wall
    lowered = traced.lower()
  else:                                     # jax.pmap
    lowered = setup.train_step.lower(*args)
  t_lowered = time.perf_counter()
  phases["lower"] = t_lowered - wall - phases.get("trace", 0.0)
  compiled = lowered.compile()
  end = time.perf_counter()
  phases["xla"] = end - t_lowered
  return compiled, end - wall, time.process_time() - cpu, phases


def count_fusions(compiled: Any) -> int:
  """XLA fusions (kernels, on CPU) in a compiled executable's optimised HLO."""
  return compiled.as_text().count(" fusion(")


def compile_report(config: Any) -> str:
  """Only the compile figures of `config`'s training step (--compile_only): one line.

  Each call traces and compiles anew only in a fresh process (JAX caches both), so
  repeated measurements mean repeated commands.
  """
  setup = prepare(config)
  compiled, compile_s, compile_cpu_s, phases = compile_step(setup)
  return _compile_line(compile_s, compile_cpu_s, phases, count_fusions(compiled))


def _compile_line(compile_s: float, cpu_s: float, phases: dict, fusions: int) -> str:
  front = (f"trace {phases['trace']:.2f} + lower {phases['lower']:.2f}" if "trace" in phases
           else f"trace and lower {phases['lower']:.2f}")
  return (f"{compile_s:.2f} s ({front} + XLA {phases['xla']:.2f}; {cpu_s:.2f} s CPU time of "
          f"this process; {fusions} XLA fusions)")


def run(config: Any, steps: int, log=print, profile_dir: str | None = None) -> Figures:
  """Compiles and times `steps` training steps of the configured model; returns the figures.

  profile_dir: also records a `jax.profiler` trace (TensorBoard / Perfetto) of
  PROFILE_STEPS extra steps there, after the timed ones, and attributes its op time to
  the parts of the step (`transformer.step_profile`).
  """
  if steps < 1:
    raise settings.ConfigError(f"steps={steps} must be >= 1")
  setup = prepare(config)
  opts, dp, model_cfg = setup.options, setup.dp, setup.model_cfg
  src, tgt = opts["source_length"], opts["target_length"]
  device = dp.mesh.devices.flat[0]
  log(f"model {model_cfg}\n{setup.parameters:,} parameters; batch {setup.batch_size} x (source "
      f"{src} + target {tgt}); {dp.num_devices} x {device.device_kind} ({dp.backend})")
  compiled, compile_s, compile_cpu_s, phases = compile_step(setup)

  peak = gpu_peak(device) if device.platform == "gpu" else None
  # The matmul ceiling is sampled between the timed steps, so that both see the same
  # machine load (the cores may be shared); CPU: float32, GPU: bf16 (for reference).
  mm_dtype = jnp.bfloat16 if device.platform == "gpu" else jnp.float32
  matmul = matmul_fn(opts["matmul_size"], mm_dtype, device)
  state, batch, rng = setup.state, setup.batch, setup.rng
  for _ in range(opts["warmup_steps"]):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(state)
  times, cpu_times, faults, rates, cpu_rates = [], [], [], [], []
  for i in range(max(steps, opts["matmul_repeats"])):
    if i < steps:
      wall, cpu, fault = time.perf_counter(), time.process_time(), _minor_faults()
      state, metrics = compiled(state, batch, rng)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - wall)
      cpu_times.append(time.process_time() - cpu)
      faults.append(_minor_faults() - fault)
    if i < opts["matmul_repeats"]:
      flop, wall, cpu = matmul()
      rates.append(flop / wall)
      cpu_rates.append(flop / cpu)
  profile = None
  if profile_dir:
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      for _ in range(PROFILE_STEPS):
        state, metrics = compiled(state, batch, rng)
      jax.block_until_ready((state, metrics))
    log(f"profile of {PROFILE_STEPS} steps written under {profile_dir}")
    profile = step_profile.breakdown(profile_dir, compiled.as_text(), PROFILE_STEPS,
                                     model_cfg.output_vocab_size)
  measured = statistics.median(rates)
  mem, mem_kind = peak_memory(list(dp.mesh.devices.flat))
  if peak:
    ceiling, ceiling_kind = peak * dp.num_devices, f"published bf16 peak x {dp.num_devices}"
  else:
    ceiling = measured
    ceiling_kind = f"measured {np.dtype(mm_dtype).name} {opts['matmul_size']}^3 matmul"
  return Figures(
      device=device.device_kind, num_devices=dp.num_devices, parameters=setup.parameters,
      batch=setup.batch_size, source_length=0 if model_cfg.decoder_only else src,
      target_length=tgt, compile_s=compile_s, compile_cpu_s=compile_cpu_s,
      compile_phases_s=phases, fusions=count_fusions(compiled), step_times_s=times,
      step_cpu_s=cpu_times, step_page_faults=faults,
      matmul_cpu_flops=statistics.median(cpu_rates),
      model_flops_per_step=flops.step_flops(model_cfg, setup.batch_size, src, tgt).train,
      ceiling_flops=ceiling, ceiling_kind=ceiling_kind, matmul_flops=measured,
      peak_memory_bytes=int(mem), peak_memory_kind=mem_kind, profile=profile,
      **step_memory(compiled))


def _minor_faults() -> int:
  """This process's minor page faults so far (pages mapped on first touch)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def step_memory(compiled: Any) -> dict[str, int]:
  """The compiled step's own memory (XLA's plan, per device; available on CPU and GPU
  alike), unlike the process RSS, which also holds the compiler and everything before."""
  analysis = compiled.memory_analysis()
  return {"step_temp_bytes": int(analysis.temp_size_in_bytes),
          "step_argument_bytes": int(analysis.argument_size_in_bytes)}


def report(f: Figures) -> str:
  """The figures as aligned lines."""
  t = sorted(f.step_times_s)
  q1, q3 = (np.percentile(t, [25, 75]) if len(t) > 1 else (t[0], t[0]))
  lines = [
      ("compile time", _compile_line(f.compile_s, f.compile_cpu_s, f.compile_phases_s,
                                     f.fusions)),
      ("median step time", f"{f.median_step_s * 1e3:.1f} ms over {len(t)} steps "
                           f"(min {t[0] * 1e3:.1f}, IQR {q1 * 1e3:.1f}-{q3 * 1e3:.1f}, "
                           f"max {t[-1] * 1e3:.1f})"),
      ("tokens/s", f"{f.tokens_per_s:,.0f} ({f.tokens_per_step:,} source + target tokens "
                   "per step)"),
      ("model FLOPs/step", f"{f.model_flops_per_step / 1e9:.2f} GFLOP (3 x forward matmuls)"),
      ("achieved", f"{f.achieved_flops / 1e9:.2f} GFLOP/s"),
      ("ceiling", f"{f.ceiling_flops / 1e9:.2f} GFLOP/s ({f.ceiling_kind}); measured matmul "
                  f"{f.matmul_flops / 1e9:.2f} GFLOP/s"),
      ("MFU", f"{100 * f.mfu:.1f}%"),
      ("CPU-time MFU", f"{100 * f.cpu_time_mfu:.1f}% (per CPU second of this process: "
                       f"step {statistics.median(f.step_cpu_s):.2f} s, matmul "
                       f"{f.matmul_cpu_flops / 1e9:.2f} GFLOP/CPU-s)"),
      ("page faults", f"{statistics.median(f.step_page_faults):,.0f} minor faults per step "
                      "(host pages mapped on first touch; see transformer.host_memory)"),
      ("peak memory", f"{f.peak_memory_bytes / 2**20:,.0f} MiB ({f.peak_memory_kind})"),
      ("step memory", f"{f.step_temp_bytes / 2**20:,.0f} MiB temporaries + "
                      f"{f.step_argument_bytes / 2**20:,.0f} MiB arguments per device "
                      "(XLA memory analysis)"),
  ]
  text = "\n".join(f"{name:>17s}: {value}" for name, value in lines)
  return text + "\n" + step_profile.report(f.profile) if f.profile else text
