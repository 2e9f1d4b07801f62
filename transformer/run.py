"""A run: its resolved config, tokenizer and model, bound to a workdir.

    run = create(config, workdir)                    # training: checks config and workdir
    run = load(workdir)                              # the tools: from run_config.json
    params, source = restore_params(run, "latest")   # or "averaged", or a step such as "400"

Training, evaluate, translate, average and the sweep (through training) all hold this one
typed object. What a workdir holds (written by `transformer.train`): run_config.json (the
fully resolved config), manifest.json (command line, git commit, versions, devices),
vocabulary/ (the vocabulary it trained with, `vocabulary.json` recording its sha256 and those
of the data files: see `record_vocabulary`), checkpoints/STEP (Orbax: state = {'train':
TrainState, 'rng'}, meta = {step, checksum, ...}) and, once `experiments.average_checkpoints`
ran, averaged/STEP (params + meta). The readers here open checkpoints with a read-only
CheckpointManager rather than the training `Checkpointer`, whose manager creates directories,
cleans up temporary ones and moves corrupt steps aside, which could race a run still saving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from transformer import checkpoint, data, optim, settings
from transformer import step as step_lib
from transformer.data import vocabularies
from transformer.model import Transformer
from transformer.vit import VisionConfig, VisionTransformer

AVERAGED = "averaged"  # WORKDIR/averaged/STEP: averaged params, beside (never in) checkpoints/
VOCABULARY = "vocabulary"  # WORKDIR/vocabulary/: the run's copy of its vocabulary + record
VOCABULARY_RECORD = os.path.join(VOCABULARY, "vocabulary.json")


class RunError(ValueError):
  """A workdir or checkpoint that cannot be used; the message is one line."""


@dataclasses.dataclass
class Run:
  """An experiment's resolved config, tokenizer and model, bound to its workdir."""
  workdir: str
  settings: settings.Settings
  data: data.DataConfig
  optim: optim.OptimConfig
  backend: str
  config: dict[str, Any]       # the fully resolved config (run_config.json)
  tokenizer: data.Tokenizer | None  # None for images
  model: Transformer | VisionTransformer  # a ViT exactly for image data (`vision` set)
  # vocabulary.json: {tokenizer, file (None: fixed ids), sha256, data_files: {path: sha256}}
  vocabulary: dict[str, Any]
  # Compiled functions and prepared inputs, reused across calls (train, evaluation).
  cache: dict[str, Any] = dataclasses.field(default_factory=dict)
  vision: VisionConfig | None = None  # its 0 fields filled in from the dataset

  @property
  def local_batch(self) -> int:
    """This process's rows of the global batch."""
    return self.settings.batch_size // jax.process_count()

  def optimizer(self):
    """(optax transformation, learning-rate schedule) of the run."""
    return optim.make_optimizer(self.optim, self.model.config.d_model,
                                self.settings.num_train_steps)

  def init_state(self, key: jax.Array) -> step_lib.TrainState:
    """Step 0 of the run; under jax.eval_shape, the abstract state checkpoints restore into."""
    return step_lib.init_state(self.model, self.optimizer()[0], key,
                               source_length=self.data.max_source_length,
                               target_length=self.data.max_target_length)

  def abstract_state(self, sharding: jax.sharding.Sharding) -> dict[str, Any]:
    """{'train': TrainState, 'rng'} as ShapeDtypeStructs with `sharding`: a restore target."""
    tree = jax.eval_shape(lambda: {"train": self.init_state(jax.random.key(0)),
                                   "rng": jax.random.key_data(jax.random.key(0))})
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)

  @property
  def direction(self) -> str:
    """The translation direction, e.g. 'en -> de' (synthetic tasks: the task's name)."""
    cfg = self.data
    if cfg.images:
      return f"{cfg.dataset} (image classification)"
    if cfg.builder_name == "synthetic_seq2seq":
      return f"{cfg.dataset} (inputs -> targets)"
    if cfg.decoder_only:
      return f"{cfg.dataset} (language model)"
    return f"{cfg.source_lang} -> {cfg.target_lang}"

  def check_translation(self) -> None:
    """RunError unless the run is an encoder-decoder model (translation, BLEU)."""
    if self.data.images:
      raise RunError(f"workdir {self.workdir!r} holds an image classifier ({self.data.dataset}); "
                     "translation needs an encoder-decoder run")
    if self.data.decoder_only:
      raise RunError(f"workdir {self.workdir!r} holds a language model ({self.data.dataset}); "
                     "translation and BLEU need an encoder-decoder run")


  def check_language_model(self) -> None:
    """RunError unless the run is a decoder-only language model (sampling)."""
    if not (self.data.decoder_only and self.model.config.decoder_only):
      raise RunError(f"workdir {self.workdir!r} holds {self.direction}, not a language model; "
                     "sampling a prompt's continuation needs a decoder-only run")

  @property
  def text_unit(self) -> str | None:
    """'char' or 'byte' where one token is one character or byte of text (bits per unit)."""
    return {"char": "char", "byte": "byte"}.get(self.data.tokenizer_kind)


def create(config: Any, workdir: str) -> Run:
  """The run `config` describes in `workdir`, for training; raises settings.ConfigError
  (one line, nothing written) for a bad config, data or workdir.

  A new run builds its tokenizer from the data (`record_vocabulary` then copies it); a
  run that started before uses its copy, after checking that its data did not change.
  """
  cfg, data_cfg, optim_cfg, backend = settings.resolve(config)
  settings.check_devices(cfg, backend)
  resolved = settings.resolved_config(cfg, data_cfg, optim_cfg, backend)
  started = settings.check_workdir(workdir, resolved)
  record = _read_vocabulary(workdir, settings.ConfigError) if started else None
  if record is not None:
    changed = _changed_files(record["data_files"])
    if changed:
      raise settings.ConfigError(f"the data of this run changed since it started: "
                                 f"{'; '.join(changed)}; restore it, or train in a new --workdir")
  return _build(workdir, cfg, data_cfg, optim_cfg, backend, resolved, record,
                settings.ConfigError)


def load(workdir: str) -> Run:
  """The run recorded in `workdir` (cheap: nothing is compiled); raises RunError.

  Its tokenizer is the run's copy of its vocabulary, whatever the data holds now.
  """
  if not os.path.isdir(workdir):
    raise RunError(f"workdir {workdir!r} does not exist")
  path = os.path.join(workdir, settings.RUN_CONFIG)
  if not os.path.exists(path):
    raise RunError(f"workdir {workdir!r} holds no training run (no {settings.RUN_CONFIG})")
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    raise RunError(f"workdir {workdir!r}: cannot read {settings.RUN_CONFIG} ({e})") from None
  for key in ("process_count", "prng_impl"):  # facts of the training machine, not keys
    recorded.pop(key, None)
  try:
    resolved = settings.resolve(recorded)
  except settings.ConfigError as e:
    raise RunError(f"workdir {workdir!r}: its recorded config does not fit this version ({e}); "
                   f"check out the commit that last ran it, {settings.recorded_commit(workdir)}"
                   ) from None
  record = _read_vocabulary(workdir, RunError)
  try:  # without a copy, the config's data or tokenizer may not be there (moved, deleted)
    return _build(workdir, *resolved, settings.resolved_config(*resolved), record, RunError)
  except settings.ConfigError as e:
    raise RunError(f"workdir {workdir!r}: {e}") from None


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def changed_data(run: Run) -> list[str]:
  """The recorded data files of a run whose content changed since it started (see below)."""
  return _changed_files((run.vocabulary or {}).get("data_files") or {})


def _changed_files(recorded: dict[str, str]) -> list[str]:
  """'FILE (sha256 X -> Y)' for each recorded data file whose content is not the same."""
  changed = []
  for path, digest in sorted(recorded.items()):
    now = _sha256(path) if os.path.isfile(path) else None
    if now != digest:
      changed.append(f"{path} (sha256 {digest[:12]} -> {now[:12] if now else 'missing'})")
  return changed


def _read_vocabulary(workdir: str, error: type[Exception]) -> dict[str, Any] | None:
  """vocabulary.json of a workdir; None (with a warning) for a run recorded before runs
  carried their vocabulary."""
  path = os.path.join(os.path.abspath(workdir), VOCABULARY_RECORD)
  if not os.path.exists(path):
    logging.warning("workdir %s has no %s (recorded before runs carried their vocabulary): "
                    "rebuilding the vocabulary from the data, which must not have changed",
                    workdir, VOCABULARY_RECORD)
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise error(f"workdir {workdir!r}: cannot read {VOCABULARY_RECORD} ({e})") from None


def _copied_vocabulary(workdir: str, record: dict[str, Any], error: type[Exception]
                       ) -> bytes | None:
  """The run's copy of its vocabulary, checked against the recorded sha256."""
  if record["file"] is None:
    return None
  path = os.path.join(os.path.abspath(workdir), record["file"])
  try:
    with open(path, "rb") as f:
      copy = f.read()
  except OSError as e:
    raise error(f"workdir {workdir!r}: cannot read the run's vocabulary {record['file']} "
                f"({e.strerror})") from None
  digest = hashlib.sha256(copy).hexdigest()
  if digest != record["sha256"]:
    raise error(f"workdir {workdir!r}: the run's vocabulary {record['file']} is not the one it "
                f"trained with (sha256 {record['sha256'][:12]} -> {digest[:12]})")
  return copy


def _build(workdir: str, cfg: settings.Settings, data_cfg: data.DataConfig,
           optim_cfg: optim.OptimConfig, backend: str, resolved: dict[str, Any],
           record: dict[str, Any] | None, error: type[Exception]) -> Run:
  if data_cfg.images:  # no vocabulary: the record says so, and the model is a ViT
    vision = settings.vision_config(cfg, data_cfg)
    model = VisionTransformer(settings.model_config(cfg, None), vision)
    record = {"tokenizer": data_cfg.tokenizer_kind, "file": None, "sha256": None,
              "data_files": {}}
    run = Run(workdir=os.path.abspath(workdir), settings=cfg, data=data_cfg, optim=optim_cfg,
              backend=backend, config=resolved, tokenizer=None, model=model,
              vocabulary=record, vision=vision)
    run.cache["vocabulary_bytes"] = None
    return run
  if record is not None:
    vocabulary = _copied_vocabulary(workdir, record, error)
  else:
    try:  # e.g. an unknown dataset name or a missing data path: still before any writing
      vocabulary = vocabularies.vocabulary_bytes(data_cfg)
      record = {
          "tokenizer": data_cfg.tokenizer_kind,
          "file": (os.path.join(VOCABULARY, os.path.basename(vocabularies.vocabulary_path(
              data_cfg))) if vocabulary is not None else None),
          "sha256": hashlib.sha256(vocabulary).hexdigest() if vocabulary is not None else None,
          "data_files": {p: _sha256(p) for p in vocabularies.source_files(data_cfg)}}
    except (ValueError, OSError) as e:
      raise settings.ConfigError(f"data.dataset={data_cfg.dataset!r}: "
                                 f"{str(e).splitlines()[0]}") from e
  tokenizer = vocabularies.tokenizer_from_bytes(data_cfg, vocabulary)
  model = Transformer(settings.model_config(cfg, tokenizer.vocab_size))
  run = Run(workdir=os.path.abspath(workdir), settings=cfg, data=data_cfg, optim=optim_cfg,
            backend=backend, config=resolved, tokenizer=tokenizer, model=model,
            vocabulary=record)
  run.cache["vocabulary_bytes"] = vocabulary
  return run


def record_vocabulary(run: Run) -> None:
  """Copies the run's vocabulary into WORKDIR/vocabulary/ with vocabulary.json, once, before
  run_config.json (process 0): from then on the run never rebuilds it."""
  path = os.path.join(run.workdir, VOCABULARY_RECORD)
  if jax.process_index() != 0 or os.path.exists(path):
    return
  if run.vocabulary["file"] is not None:  # (write_atomically creates WORKDIR/vocabulary/)
    vocabularies.write_atomically(os.path.join(run.workdir, run.vocabulary["file"]),
                                  run.cache["vocabulary_bytes"])
  vocabularies.write_atomically(path, (json.dumps(run.vocabulary, indent=2) + "\n").encode())


def _device_sharding() -> jax.sharding.Sharding:
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _manager(directory: str) -> ocp.CheckpointManager:
  # The options read_only forces anyway, given explicitly so that Orbax does not warn of each.
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0, max_to_keep=None,
      cleanup_tmp_directories=False))


def steps_in(directory: str) -> list[int]:
  """Complete checkpoint steps in an Orbax directory (none if it does not exist)."""
  if not os.path.isdir(directory):
    return []
  with _manager(directory) as mngr:
    return sorted(mngr.all_steps())


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def averaged_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), AVERAGED)


def _restore(directory: str, step: int, item: str, target: Any) -> tuple[Any, dict[str, Any]]:
  """checkpoint.restore_verified from a read-only manager, as RunError (one line)."""
  with _manager(directory) as mngr:
    try:
      return checkpoint.restore_verified(mngr, step, item, target)
    except checkpoint.CorruptCheckpointError as e:
      raise RunError(f"checkpoint {directory}/{step} is corrupt ({e})") from None
    except Exception as e:  # noqa: BLE001  (Orbax raises many types for a bad step)
      reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
      raise RunError(f"checkpoint {directory}/{step} is unreadable ({reason})") from None


def restore_train_params(run: Run, step: int) -> Any:
  """Params of checkpoints/STEP, after checking the recorded checksum; raises RunError."""
  tree, _ = _restore(checkpoints_dir(run.workdir), step, "state",
                     run.abstract_state(_device_sharding()))
  return tree["train"].params


def restore_averaged_params(run: Run, step: int | None = None) -> tuple[Any, dict[str, Any]]:
  """(params, meta) of averaged/STEP (the newest by default); raises RunError."""
  directory = averaged_dir(run.workdir)
  steps = steps_in(directory)
  if not steps:
    check_checkpoint(run, AVERAGED)  # raises the one-line message
  step = steps[-1] if step is None else step
  return _restore(directory, step, "params",
                  run.abstract_state(_device_sharding())["train"].params)


def check_checkpoint(run: Run, which: str = "latest") -> None:
  """Raises RunError unless `which` ('latest', 'averaged' or a step) names a saved checkpoint.

  Cheap (reads directory listings): tools call it before reading input or compiling.
  """
  if which == AVERAGED:
    if not steps_in(averaged_dir(run.workdir)):
      raise RunError(f"workdir {run.workdir} has no averaged checkpoint; run "
                     f"python -m experiments.average_checkpoints --workdir={run.workdir} first")
    return
  steps = steps_in(checkpoints_dir(run.workdir))
  if not steps:
    raise RunError(f"workdir {run.workdir} has no checkpoint (checkpoints/ is empty or "
                   "missing); train first")
  if which != "latest" and (not which.isdigit() or int(which) not in steps):
    raise RunError(f"--checkpoint={which!r}: not 'latest', 'averaged' or a saved step "
                   f"(steps: {', '.join(map(str, steps))})")


def restore_params(run: Run, which: str = "latest") -> tuple[Any, str]:
  """(params, a description such as 'step 600' or 'average of steps 200, 400, 600').

  which: 'latest' (the newest readable step; an unreadable one is skipped with a
  warning, never moved), 'averaged', or a step number.
  """
  check_checkpoint(run, which)
  if which == AVERAGED:
    params, meta = restore_averaged_params(run)
    return params, f"average of steps {', '.join(map(str, meta['steps']))}"
  if which != "latest":
    return restore_train_params(run, int(which)), f"step {which}"
  steps = steps_in(checkpoints_dir(run.workdir))
  for step in reversed(steps):
    try:
      return restore_train_params(run, step), f"step {step}"
    except RunError as e:
      logging.warning("%s; trying an older step", e)
  raise RunError(f"no readable checkpoint in {checkpoints_dir(run.workdir)} (steps "
                 f"{', '.join(map(str, steps))})")


def host_params(params: Any) -> Any:
  """numpy copies of params (e.g. to compare or average them)."""
  return jax.tree.map(np.asarray, params)
