"""A trained run, loaded from its workdir for translation and evaluation.

    run = load_run(workdir)                          # config, tokenizer, model; no params yet
    params, source = restore_params(run, "latest")   # or "averaged", or a step such as "400"

What a workdir holds (written by `transformer.train`): run_config.json (the run's
identity: model, data, optim, ...), manifest.json (the full config), checkpoints/STEP
(Orbax: state = {'train': TrainState, 'rng'}, meta = {step, checksum, ...}) and, once
`experiments.average_checkpoints` ran, averaged/STEP (params + meta). Everything here
only reads: checkpoints are opened with a read-only CheckpointManager rather than the
training `Checkpointer`, whose manager creates directories, cleans up temporary ones
and moves corrupt steps aside, which could race a run that is still saving.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from transformer import checkpoint, data, optim, settings
from transformer import step as step_lib
from transformer.model import Transformer

AVERAGED = "averaged"  # WORKDIR/averaged/STEP: averaged params, beside (never in) checkpoints/


class RunError(ValueError):
  """A workdir or checkpoint that cannot be used; the message is one line."""


@dataclasses.dataclass
class Run:
  """What translating and evaluating a run needs, besides its params."""
  workdir: str
  settings: settings.Settings
  data_cfg: data.DataConfig
  optim_cfg: optim.OptimConfig
  tokenizer: data.Tokenizer
  model: Transformer
  # Compiled decoders and prepared inputs, reused across calls (see transformer.evaluation).
  cache: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def direction(self) -> str:
    """The translation direction, e.g. 'en -> de' (synthetic tasks: the task's name)."""
    cfg = self.data_cfg
    if cfg.builder_name == "synthetic_seq2seq":
      return f"{cfg.dataset} (inputs -> targets)"
    if cfg.decoder_only:
      return f"{cfg.dataset} (language model)"
    return f"{cfg.source_lang} -> {cfg.target_lang}"


def read_config(workdir: str) -> dict[str, Any]:
  """The run's config: manifest.json's full config, with run_config.json's identity on top."""
  if not os.path.isdir(workdir):
    raise RunError(f"workdir {workdir!r} does not exist")
  identity_path = os.path.join(workdir, settings.RUN_CONFIG)
  if not os.path.exists(identity_path):
    raise RunError(f"workdir {workdir!r} holds no training run (no {settings.RUN_CONFIG})")
  try:
    with open(identity_path) as f:
      identity = json.load(f)
    config: dict[str, Any] = {}
    manifest = os.path.join(workdir, "manifest.json")
    if os.path.exists(manifest):
      with open(manifest) as f:
        config = dict(json.load(f).get("config") or {})
  except (OSError, ValueError) as e:
    raise RunError(f"workdir {workdir!r}: cannot read its run records ({e})") from None
  # The identity is what the checkpoints were written with (train.py checks it on resume).
  config.update({k: v for k, v in identity.items() if k != "process_count"})
  return config


def load_run(workdir: str) -> Run:
  """Config, tokenizer and model of the run in `workdir` (cheap: nothing is compiled)."""
  config = read_config(workdir)
  known = {f.name for f in dataclasses.fields(settings.Settings)}
  try:
    cfg = settings.Settings(**{k: v for k, v in config.items() if k in known})
    data_cfg = data.DataConfig.from_mapping(dict(cfg.data or {}))
    optim_cfg = optim.OptimConfig.from_mapping(dict(cfg.optim or {}))
  except (TypeError, ValueError) as e:
    raise RunError(f"workdir {workdir!r}: bad recorded config ({str(e).splitlines()[0]})") from None
  if data_cfg.decoder_only:
    raise RunError(f"workdir {workdir!r} holds a language model ({data_cfg.dataset}); "
                   "translation and BLEU need an encoder-decoder run")
  tokenizer = data.build_tokenizer(data_cfg)
  model = Transformer(settings.model_config(cfg, tokenizer.vocab_size))
  return Run(workdir=os.path.abspath(workdir), settings=cfg, data_cfg=data_cfg,
             optim_cfg=optim_cfg, tokenizer=tokenizer, model=model)


def _device_sharding() -> jax.sharding.Sharding:
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract_state(run: Run) -> dict[str, Any]:
  """{'train': TrainState, 'rng'} as ShapeDtypeStructs on one device: a restore target.

  Built exactly as train.py builds its state, so that leaf order (and so the recorded
  checksum) matches; the optimizer's state shapes do not depend on the step count.
  """
  model, cfg = run.model, run.data_cfg
  tx, _ = optim.make_optimizer(run.optim_cfg, model.config.d_model,
                               max(run.settings.num_train_steps, 1))
  inputs = jnp.ones((1, cfg.max_source_length), jnp.int32)
  targets = jnp.ones((1, cfg.max_target_length), jnp.int32)

  def init():
    params = model.init(jax.random.key(0), inputs, targets)["params"]
    return {"train": step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                         opt_state=tx.init(params)),
            "rng": jax.random.key_data(jax.random.key(0))}

  sharding = _device_sharding()
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(init))


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


def restore_train_params(run: Run, step: int) -> Any:
  """Params of checkpoints/STEP, after checking the recorded checksum; raises RunError."""
  target = abstract_state(run)
  with _manager(checkpoints_dir(run.workdir)) as mngr:
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001  (Orbax raises many types for a bad step)
      reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
      raise RunError(f"checkpoint at step {step} of {run.workdir} is unreadable ({reason})"
                     ) from None
  checksum = int(checkpoint.tree_checksum(restored["state"]))
  if checksum != restored["meta"].get("checksum"):
    raise RunError(f"checkpoint at step {step} of {run.workdir} is corrupt (checksum {checksum} "
                   f"!= recorded {restored['meta'].get('checksum')})")
  return restored["state"]["train"].params


def restore_averaged_params(run: Run, step: int | None = None) -> tuple[Any, dict[str, Any]]:
  """(params, meta) of averaged/STEP (the newest by default); raises RunError."""
  directory = averaged_dir(run.workdir)
  steps = steps_in(directory)
  if not steps:
    check_checkpoint(run, AVERAGED)  # raises the one-line message
  step = steps[-1] if step is None else step
  target = abstract_state(run)["train"].params
  with _manager(directory) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  meta = dict(restored["meta"])
  if int(checkpoint.tree_checksum(restored["params"])) != meta.get("checksum"):
    raise RunError(f"averaged checkpoint {directory}/{step} is corrupt (checksum mismatch)")
  return restored["params"], meta


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
