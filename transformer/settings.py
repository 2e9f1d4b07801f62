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
import ml_collections

from transformer import parallel, vit
from transformer.config import TransformerConfig
from transformer.data import DataConfig, sources
from transformer.optim import OptimConfig
from transformer.vit import VisionConfig

RUN_CONFIG = "run_config.json"  # the fully resolved config a workdir's run started with
# The keys that shape the checkpoint and the numbers: a workdir resumes only when they agree.
# The others (step count, logging, evaluation and checkpoint intervals) may change.
IDENTITY_KEYS = ("model", "vision", "data", "optim", "batch_size", "seed", "label_smoothing",
                 "process_count", "prng_impl")
# Where prepared data is cached and how fast it is read: not what is computed.
NOT_COMPARED = ("data.data_dir", "data.read_threads", "data.read_buffer",
                "model.attention_query_block")  # where, how fast, in what memory: same numbers
DEFAULT_BACKEND = "pmap"


class ConfigError(ValueError):
  """A bad config or workdir; the message is one line and names the problem."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The experiment config's top level; `default_config()` lists every key with its default."""
  seed: int = 0                      # parameters, dropout keys and data order
  num_train_steps: int = 1000        # train_step calls (micro-batches under accumulation)
  batch_size: int = 64               # global rows per step, over all devices and hosts
  label_smoothing: float = 0.1       # epsilon_ls of §5.4
  log_every_steps: int = 50          # metrics.jsonl / TensorBoard / progress line
  eval_every_steps: int = 500        # teacher-forced metrics on data.eval_split
  checkpoint_every_steps: int = 500  # also at the end and on SIGTERM
  max_checkpoints_to_keep: int = 3
  async_checkpointing: bool = True
  num_eval_batches: int = 0          # 0: the whole eval split
  decode_at_end: bool = True         # greedy decoding of the test split: exact match
  decode_examples: int = 3           # greedy outputs printed beside their targets
  attention_diagnostics: bool = True  # per-layer/head attention statistics at each evaluation
  bleu_eval_examples: int = 0        # >0: greedy BLEU/chrF on this many eval examples per eval
  model: Any = None                  # TransformerConfig fields; vocab_size 0 = the tokenizer's
  data: Any = None                   # DataConfig fields
  optim: Any = None                  # OptimConfig fields
  parallel: Any = None               # {'backend': 'pmap' or 'shard_map'}
  # VisionConfig fields: set exactly for image datasets, whose model is a ViT on the
  # encoder of `model` (`vision_defaults()`; experiments/configs/vit_digits.py).
  vision: Any = None


def _defaults(cls) -> dict[str, Any]:
  """{field: default} of a dataclass (TransformerConfig: vocab_size 0 = the tokenizer's)."""
  out = {"vocab_size": 0} if cls is TransformerConfig else {}
  for f in dataclasses.fields(cls):
    if f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
    elif f.default is not dataclasses.MISSING:
      out[f.name] = f.default
  return out


_PLACEHOLDER_TYPES = {"str": str, "int": int, "float": float}


def _overridable(cls) -> dict[str, Any]:
  """`_defaults`, with a typed placeholder for each None default: config_flags cannot
  override a plain None (`--config.model.cross_attention_scale=qk_norm` must work)."""
  out = _defaults(cls)
  for f in dataclasses.fields(cls):
    if out.get(f.name, 0) is None:  # annotations are strings here, e.g. 'str | None'
      kind = _PLACEHOLDER_TYPES[str(f.type).split("|")[0].strip()]
      out[f.name] = ml_collections.config_dict.placeholder(kind)
  return out


def default_config() -> ml_collections.ConfigDict:
  """Every config key at its default, the base every experiment config starts from, so that
  a config states only what differs and any key can be overridden from the command line."""
  top = {k: v for k, v in _defaults(Settings).items() if v is not None}
  return ml_collections.ConfigDict({
      **top, "model": _overridable(TransformerConfig), "data": _overridable(DataConfig),
      "optim": _overridable(OptimConfig), "parallel": {"backend": DEFAULT_BACKEND}})


def vision_defaults() -> ml_collections.ConfigDict:
  """Every VisionConfig key at its default: an image experiment's `config.vision`."""
  return ml_collections.ConfigDict(_defaults(VisionConfig))


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
    model_cfg = model_config(settings, vocab_size=None)  # every model check but the vocabulary
    if settings.vision is not None:
      VisionConfig.from_mapping(dict(settings.vision))
      vit.check_encoder(model_cfg)
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e).splitlines()[0]) from None
  problems = []
  for name in ("num_train_steps", "batch_size", "log_every_steps", "eval_every_steps",
               "checkpoint_every_steps", "max_checkpoints_to_keep"):
    value = getattr(settings, name)
    if not isinstance(value, int) or value <= 0:
      problems.append(f"{name}={value!r} must be a positive integer")
  if data_cfg.images and settings.vision is None:
    problems.append(f"data.dataset={data_cfg.dataset!r} holds images, so config.vision (the "
                    "ViT's patches and pooling, settings.vision_defaults()) must be set")
  if settings.vision is not None and not data_cfg.images:
    problems.append(f"config.vision is set, but data.dataset={data_cfg.dataset!r} is not an "
                    "image dataset (transformer.data.config.IMAGE_DATASETS)")
  if not data_cfg.images:  # image rows are patches, not max_len tokens
    problems += _length_problems(model_cfg, data_cfg)
    if data_cfg.decoder_only != model_cfg.decoder_only:
      what, fix = (("a language-model corpus", "a language model has no encoder: set it to 0")
                   if data_cfg.decoder_only else ("sequence-to-sequence data", "it needs an encoder"))
      problems.append(f"data.dataset={data_cfg.dataset!r} is {what} but model.num_encoder_layers="
                      f"{model_cfg.num_encoder_layers}; {fix}")
  if not 0.0 <= settings.label_smoothing < 1.0:
    problems.append(f"label_smoothing={settings.label_smoothing!r} must be in [0, 1)")
  parallel_raw = dict(settings.parallel or {})
  if set(parallel_raw) - {"backend"}:
    problems.append(f"unknown parallel key(s): {', '.join(sorted(set(parallel_raw) - {'backend'}))}")
  backend = parallel_raw.get("backend", DEFAULT_BACKEND)
  if backend not in parallel.BACKENDS:
    problems.append(f"parallel.backend={backend!r} is not one of {', '.join(parallel.BACKENDS)}")
  if problems:
    raise ConfigError("invalid config: " + "; ".join(problems))
  return settings, data_cfg, optim_cfg, backend


def _length_problems(model_cfg: TransformerConfig, data_cfg: DataConfig) -> list[str]:
  """max_len is the longest sequence the model takes: the learned encoding's table, and
  the cap of translate/evaluate on source and output tokens (sinusoidal too), so a shorter
  one would train and then truncate every decoded line."""
  lengths = {"data.max_target_length": data_cfg.max_target_length}
  if not data_cfg.decoder_only:
    lengths["data.max_source_length"] = data_cfg.max_source_length
  if model_cfg.positional_encoding == "learned" and data_cfg.max_eval_length:
    lengths["data.max_eval_length"] = data_cfg.max_eval_length  # eval rows hit the table
  over = {key: n for key, n in lengths.items() if n > model_cfg.max_len}
  if not over:
    return []
  named = " and ".join(f"{key}={n}" for key, n in over.items())
  return [f"model.max_len={model_cfg.max_len} is shorter than {named}: the model takes at "
          f"most max_len tokens; set model.max_len >= {max(over.values())}"]


def check_devices(settings: Settings, backend: str) -> None:
  """ConfigError unless this machine's devices can split the batch (training only: the
  tools read a run on whatever machine they run on)."""
  try:
    parallel.check_batch_size(settings.batch_size, backend)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def vision_config(settings: Settings, data_cfg: DataConfig) -> VisionConfig:
  """The VisionConfig, its 0 fields (image_size, num_channels, num_classes) the dataset's;
  ConfigError where the dataset's images or classes are not the configured ones."""
  from transformer.data import images  # noqa: PLC0415  (TFDS builder info)
  vision = VisionConfig.from_mapping(dict(settings.vision))
  try:
    (height, width, channels), classes = images.image_spec(data_cfg)
  except (ValueError, OSError) as e:
    raise ConfigError(f"data.dataset={data_cfg.dataset!r}: {str(e).splitlines()[0]}") from None
  if height != width:
    raise ConfigError(f"data.dataset={data_cfg.dataset!r} has {height} x {width} images; the ViT "
                      "takes square ones")
  data_values = {"image_size": height, "num_channels": channels, "num_classes": classes}
  for key, value in data_values.items():
    if getattr(vision, key) not in (0, value):
      raise ConfigError(f"vision.{key}={getattr(vision, key)} but data.dataset="
                        f"{data_cfg.dataset!r} has {value}; set vision.{key}=0 to take the "
                        "dataset's")
  try:
    return vision.replace(**data_values)
  except ValueError as e:  # e.g. the dataset's image size is not divisible by patch_size
    raise ConfigError(f"{e} (data.dataset={data_cfg.dataset!r})") from None


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


def resolved_config(settings: Settings, data_cfg: DataConfig, optim_cfg: OptimConfig,
                    backend: str) -> dict[str, Any]:
  """What `resolve` returned as JSON-able values: every key, defaults filled in, data_dir
  absolute, and the PRNG implementation (what run_config.json records)."""
  # resolve() validated the model section; vocab_size 0 means the tokenizer's.
  model = {**_defaults(TransformerConfig), **dict(settings.model or {})}
  top = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
  if settings.vision is not None:  # image runs only: text runs' records stay as they were
    top["vision"] = {**_defaults(VisionConfig), **dict(settings.vision)}
  else:
    top.pop("vision")
  top.update(model=model, data=dataclasses.asdict(data_cfg),
             optim=dataclasses.asdict(optim_cfg), parallel={"backend": backend},
             process_count=jax.process_count(),  # each process checkpoints its iterator
             prng_impl=str(jax.config.jax_default_prng_impl))  # shapes the checkpointed key
  return json.loads(json.dumps(top))


def differences(recorded: Mapping[str, Any], config: Mapping[str, Any],
                keys: tuple[str, ...] = IDENTITY_KEYS) -> str:
  """'key: old -> new; ...' (the first four) where two resolved configs differ on `keys`."""
  diffs = []
  defaults = default_config().to_dict()
  for key in keys:
    diffs += _differences(recorded.get(key, _ABSENT), config.get(key, _ABSENT), f"{key}.",
                          defaults.get(key, _ABSENT))
  return "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")


class _Absent:
  def __repr__(self) -> str:
    return "(absent)"


_ABSENT = _Absent()


def _differences(old: Any, new: Any, prefix: str, default: Any) -> list[str]:
  if prefix[:-1] in NOT_COMPARED:
    return []
  if isinstance(old, Mapping) and isinstance(new, Mapping):
    out = []
    defaults = default if isinstance(default, Mapping) else {}
    for key in sorted(set(old) | set(new)):
      out += _differences(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}.",
                          defaults.get(key, _ABSENT))
    return out
  if old is _ABSENT and new == default:  # a key added since, at its default: new knobs
    return []                            # default to the behaviour that was there before
  return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def recorded_commit(workdir: str) -> str:
  """The git commit that last ran the run in `workdir` (manifest.json), or 'unknown'."""
  try:
    with open(os.path.join(workdir, "manifest.json")) as f:
      return json.load(f).get("git_commit") or "unknown"
  except (OSError, ValueError):
    return "unknown"


def check_workdir(workdir: str, config: Mapping[str, Any]) -> bool:
  """Raises ConfigError for an unwritable workdir, one holding a run of another config, or
  a data path or data_dir training cannot read.

  `config` is `resolved_config(...)`. Returns whether the workdir already holds this run.
  Writes nothing.
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
    diffs = differences(old, config)
    if diffs:
      raise ConfigError(
          f"workdir {workdir!r} holds a run of another config ({diffs}), last run at git commit "
          f"{recorded_commit(path)}: use a new --workdir, or check out that commit to continue it")
  _check_data_paths(DataConfig.from_mapping(config["data"]))
  # The nearest existing ancestor must let us create and write files.
  probe_dir = path
  while not os.path.exists(probe_dir):
    probe_dir = os.path.dirname(probe_dir)
  if not os.access(probe_dir, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir {workdir!r} is not writable ({probe_dir} denies writing)")
  return os.path.exists(record)


def _check_data_paths(data_cfg: DataConfig) -> None:
  """The data.path and data.data_dir training reads, checked before anything is built:
  the identity and byte tokenizers never open the data, so the first to notice would be
  the input pipeline, after the model is built."""
  try:
    sources.check_data_dir(data_cfg.data_dir)
    if data_cfg.builder_name in ("parallel_text", "lm_text"):
      sources.check_path(data_cfg)
    sources.check_preparable(data_cfg)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def record_config(workdir: str, config: Mapping[str, Any]) -> None:
  """Written once, when a run starts in an empty workdir (process 0)."""
  record = os.path.join(os.path.abspath(workdir), RUN_CONFIG)
  if jax.process_index() == 0 and not os.path.exists(record):
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record + ".tmp", "w") as f:
      json.dump(dict(config), f, indent=2)
    os.replace(record + ".tmp", record)
