"""The experiment config, resolved and checked before anything is compiled or written.

Every problem found here is a one-line `ConfigError` naming the key and value, and
raising it leaves the workdir exactly as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax

from transformer import parallel
from transformer import rng as rng_lib
from transformer.config import TransformerConfig
from transformer.data import DataConfig
from transformer.optim import OptimConfig

RUN_CONFIG = "run_config.json"  # what a workdir's run was started with


class ConfigError(ValueError):
  """A bad config or workdir; the message is one line and names the problem."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The experiment config's top level (comments in experiments/configs/default.py)."""
  seed: int = 0
  num_train_steps: int = 1000
  batch_size: int = 64               # global rows per step, over all devices and hosts
  label_smoothing: float = 0.1       # epsilon_ls of §5.4
  log_every_steps: int = 50
  eval_every_steps: int = 500
  checkpoint_every_steps: int = 500
  max_checkpoints_to_keep: int = 3
  async_checkpointing: bool = True
  num_eval_batches: int = 0          # 0: the whole eval split
  decode_at_end: bool = True         # greedy decoding of the test split: exact match
  decode_examples: int = 3           # greedy outputs printed beside their targets
  attention_diagnostics: bool = True  # per-layer/head attention statistics at each evaluation
  bleu_eval_examples: int = 0        # >0: greedy BLEU/chrF on this many eval examples per eval
  dropout_rng: str = "threefry"      # the dropout keys' PRNG (transformer.rng.DROPOUT_RNGS)
  model: Any = None                  # raw mapping; vocab_size 0 = the tokenizer's
  data: Any = None
  optim: Any = None
  parallel: Any = None


def _raw(config: Any) -> dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def resolve(config: Any) -> tuple[Settings, DataConfig, OptimConfig, str]:
  """(settings, data config, optim config, backend); raises ConfigError."""
  raw = _raw(config)
  known = {f.name for f in dataclasses.fields(Settings)}
  unknown = sorted(set(raw) - known)
  if unknown:
    raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
  try:
    settings = Settings(**raw)
    data_cfg = DataConfig.from_mapping(dict(settings.data or {}))
    optim_cfg = OptimConfig.from_mapping(dict(settings.optim or {}))
    model_config(settings, vocab_size=None)  # every model check except the vocabulary
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e).splitlines()[0]) from None
  problems = []
  for name in ("num_train_steps", "log_every_steps", "eval_every_steps",
               "checkpoint_every_steps", "max_checkpoints_to_keep"):
    value = getattr(settings, name)
    if not isinstance(value, int) or value <= 0:
      problems.append(f"{name}={value!r} must be a positive integer")
  try:
    rng_lib.check_name(settings.dropout_rng)
  except ValueError as e:
    problems.append(str(e))
  if not 0.0 <= settings.label_smoothing < 1.0:
    problems.append(f"label_smoothing={settings.label_smoothing!r} must be in [0, 1)")
  parallel_raw = dict(settings.parallel or {})
  if set(parallel_raw) - {"backend"}:
    problems.append(f"unknown parallel key(s): {', '.join(sorted(set(parallel_raw) - {'backend'}))}")
  backend = parallel_raw.get("backend", "pmap")
  if problems:
    raise ConfigError("invalid config: " + "; ".join(problems))
  try:
    parallel.check_batch_size(settings.batch_size, backend)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return settings, data_cfg, optim_cfg, backend


def model_config(settings: Settings, vocab_size: int | None) -> TransformerConfig:
  """The TransformerConfig; vocab_size None checks everything else with a placeholder."""
  values = dict(settings.model or {})
  configured = values.get("vocab_size") or 0
  if vocab_size is None:
    values["vocab_size"] = configured or 1
  elif not configured:
    values["vocab_size"] = vocab_size
  elif configured != vocab_size:
    raise ConfigError(f"model.vocab_size={configured} but the tokenizer has {vocab_size} "
                      f"tokens; set model.vocab_size=0 to take the tokenizer's")
  return TransformerConfig.from_mapping(values)


def run_identity(config: Any) -> dict[str, Any]:
  """What must not change within one workdir: it shapes the checkpoint and the numbers."""
  raw = _raw(config)
  identity = {k: raw.get(k) for k in _IDENTITY_KEYS}
  identity["process_count"] = jax.process_count()  # each process checkpoints its iterator
  return _with_defaults(json.loads(json.dumps(identity)))


_IDENTITY_KEYS = ("model", "data", "optim", "batch_size", "seed", "label_smoothing",
                  "dropout_rng")


def _field_defaults(cls) -> dict[str, Any]:
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.default is not dataclasses.MISSING}


def _with_defaults(identity: dict[str, Any]) -> dict[str, Any]:
  """A missing key means its dataclass default, in a new config as in a recorded one: a
  run recorded before a key existed says nothing of it (optim.flat_moments,
  model.custom_vjp, dropout_rng), and ran as that default does."""
  identity = dict(identity)
  for key, cls in (("optim", OptimConfig), ("model", TransformerConfig)):
    if isinstance(identity.get(key), dict):
      identity[key] = {**_field_defaults(cls), **identity[key]}
  if identity.get("dropout_rng") is None:
    identity["dropout_rng"] = Settings.dropout_rng
  return identity


def identity_differences(recorded: Mapping[str, Any], identity: Mapping[str, Any]) -> str:
  """'key: old -> new; ...' for the (first four) differences between a recorded identity
  and this one; '' when they agree."""
  diffs = _differences(_with_defaults(dict(recorded)), dict(identity))
  return "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  if isinstance(old, Mapping) and isinstance(new, Mapping):
    out = []
    for key in sorted(set(old) | set(new)):
      out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
    return out
  return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_workdir(workdir: str, identity: Mapping[str, Any]) -> bool:
  """Raises ConfigError for an unwritable workdir or one holding a different run.

  Returns whether the workdir already holds this run. Writes nothing but a probe file.
  """
  if not workdir:
    raise ConfigError("--workdir is required")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"workdir {workdir!r} exists and is not a directory")
  record = os.path.join(path, RUN_CONFIG)
  if os.path.exists(record):
    try:
      with open(record) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(f"workdir {workdir!r}: cannot read {RUN_CONFIG} ({e})") from None
    diffs = identity_differences(old, identity)
    if diffs:
      raise ConfigError(f"workdir {workdir!r} holds a run with an incompatible config ({diffs}); "
                        f"use a new --workdir or the same config")
  # The nearest existing ancestor must let us create and write files.
  probe_dir = path
  while not os.path.exists(probe_dir):
    probe_dir = os.path.dirname(probe_dir)
  if not os.access(probe_dir, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir {workdir!r} is not writable ({probe_dir} denies writing)")
  return os.path.exists(record)


def record_identity(workdir: str, identity: Mapping[str, Any]) -> None:
  """Written once, when a run starts in an empty workdir (process 0)."""
  record = os.path.join(os.path.abspath(workdir), RUN_CONFIG)
  if jax.process_index() == 0 and not os.path.exists(record):
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record + ".tmp", "w") as f:
      json.dump(dict(identity), f, indent=2)
    os.replace(record + ".tmp", record)
