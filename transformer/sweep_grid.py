"""The points of a sweep: the cartesian product of `--grid=KEY=V1,V2,...` flags times seeds.

Every problem is a one-line `GridError` raised before anything runs: an unknown key (with
the nearest valid ones), a section, a value not of the key's type, an empty or repeated
list, `seed` (that is `--seeds`), a key the base config makes ineffective, and any point
whose config does not resolve (`settings.resolve`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from transformer import settings
from transformer.config import ATTENTION_SITES

# Swept key -> base keys that override it: sweeping it while the base sets them would
# change only part of the model (or nothing), so the sweep refuses.
OVERRIDDEN_BY = {f"model.attention_{what}": tuple(f"model.{s}_attention_{what}"
                                                 for s in ATTENTION_SITES)
                 for what in ("scale", "kind")}
NONE = "None"  # the value text that unsets a None-able key ('none' is a scale policy)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")  # in a run directory's name


class GridError(ValueError):
  """A bad --grid or --seeds; the message is one line."""


@dataclasses.dataclass
class Point:
  """One run of a sweep: its grid values, seed and config (plain dicts: picklable)."""
  name: str                  # the grid values, e.g. 'attention_scale=none,d_ff=128'
  run_name: str              # its directory: the name and the seed, e.g. '...,seed=0'
  values: dict[str, Any]     # {grid key: value}
  axes: dict[str, Any]       # {grid flag's key: value}: keys varied together are one axis,
                             # 'K1+K2' with the value text 'A/B' (the tables' columns)
  seed: int
  config: dict[str, Any]     # the run's config, as ConfigDict.to_dict()


def parse_seeds(texts: Sequence[str]) -> list[int]:
  try:
    seeds = [int(s) for s in texts]
  except ValueError:
    raise GridError(f"--seeds must be integers, got {','.join(texts)}") from None
  if not seeds:
    raise GridError("--seeds is empty")
  if len(set(seeds)) != len(seeds):
    raise GridError(f"--seeds repeats a value: {','.join(texts)}")
  return seeds


def parse_grid(base: ml_collections.ConfigDict, specs: Sequence[str]
               ) -> dict[tuple[str, ...], list[tuple[Any, ...]]]:
  """{keys: value tuples} of the --grid flags, each value parsed to its key's type.

  `KEY=V1,V2` varies one key; `KEY1+KEY2=A1/B1,A2/B2` varies keys together (a family such
  as model.attention_kind+model.attention_scale=dot_product/none,additive/inv_sqrt_dk);
  the flags multiply.
  """
  defaults = settings.default_config()  # every key, typed: also for a base that omits some
  grid: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
  seen: set[str] = set()
  for spec in specs:
    head, sep, text = spec.partition("=")
    keys = tuple(k.strip() for k in head.split("+"))
    if not sep or not all(keys):
      raise GridError(f"--grid={spec}: expected KEY=V1,V2,... or KEY1+KEY2=A1/B1,A2/B2,...")
    for key in keys:
      if key in seen:
        raise GridError(f"--grid gives {key} twice")
      seen.add(key)
    types = [_key_type(base, defaults, key) for key in keys]
    items = [t.strip() for t in text.split(",")] if text.strip() else []
    if not items:
      raise GridError(f"--grid={head}= has no values")
    if "" in items:
      raise GridError(f"--grid={spec}: an empty value")
    values = []
    for item in items:
      parts = [p.strip() for p in item.split("/")] if len(keys) > 1 else [item]
      if len(parts) != len(keys):
        raise GridError(f"--grid={head}: {item!r} has {len(parts)} value(s) for {len(keys)} "
                        "keys; join a key's values with '/'")
      values.append(tuple(_parse(k, t, *kt) for k, t, kt in zip(keys, parts, types)))
    if len(set(values)) != len(values):
      raise GridError(f"--grid={head} repeats a value: {','.join(items)}")
    grid[keys] = values
  for key in seen:
    fixed = [k for k in OVERRIDDEN_BY.get(key, ()) if k not in seen and _get(base, k) is not None]
    if fixed:
      raise GridError(f"the base config sets {', '.join(fixed)}, which override {key} that "
                      f"the grid varies; leave them unset (or sweep them too)")
  return grid


def plan(base: Mapping[str, Any], specs: Sequence[str], seeds: Sequence[int]) -> list[Point]:
  """Every point of the grid times the seeds, each config resolved; raises GridError."""
  if not isinstance(base, ml_collections.ConfigDict):
    base = ml_collections.ConfigDict(base)
  grid = parse_grid(base, specs)
  if not seeds:
    raise GridError("--seeds is empty")
  short = labels([key for keys in grid for key in keys])
  points, names = [], {}
  for combination in itertools.product(*grid.values()):
    values = {k: v for keys, group in zip(grid, combination) for k, v in zip(keys, group)}
    axes = {"+".join(keys): group[0] if len(keys) == 1 else "/".join(map(value_text, group))
            for keys, group in zip(grid, combination)}
    name = ",".join(f"{short[k]}={_safe(value_text(v))}" for k, v in values.items())
    if name in names:
      raise GridError(f"grid values {names[name]} and {values} give the same name {name!r}")
    names[name] = values
    for seed in seeds:
      run_name = f"{name},seed={seed}" if name else f"seed={seed}"
      config = _point_config(base, values, seed).to_dict()
      try:
        settings.resolve(config)
      except settings.ConfigError as e:
        raise GridError(f"grid point {run_name}: {e}") from None
      points.append(Point(name=name or "base", run_name=run_name, values=values, axes=axes,
                          seed=seed, config=config))
  return points


def value_text(value: Any) -> str:
  """How a grid value is written in names and tables (floats as repr: 1e-3 -> '0.001')."""
  return NONE if value is None else repr(value) if isinstance(value, float) else str(value)


def labels(keys: Sequence[str]) -> dict[str, str]:
  """{key: short label}: the last component, or the whole key where two keys share it; an
  axis of keys varied together ('K1+K2') is labelled by its keys' labels, joined by '+'."""
  parts = [k.split("+") for k in keys]
  flat = [p for ps in parts for p in ps]
  last = [p.rpartition(".")[2] for p in flat]
  short = {p: _safe(l if last.count(l) == 1 else p) for p, l in zip(flat, last)}
  return {k: "+".join(short[p] for p in ps) for k, ps in zip(keys, parts)}


def _safe(text: str) -> str:
  return _UNSAFE.sub("-", text)


def _find(config: ml_collections.ConfigDict, key: str) -> tuple[Any, str] | None:
  """(section, leaf name) holding the dotted `key`, or None where it is absent."""
  node = config
  *parents, leaf = key.split(".")
  for part in parents:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return (node, leaf) if isinstance(node, ml_collections.ConfigDict) and leaf in node else None


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  found = _find(config, key)
  return found[0][found[1]] if found else None


def _leaf_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
  out = []
  for k, v in config.items():
    out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, Mapping) else [f"{prefix}{k}"]
  return out


def _key_type(base: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
              key: str) -> tuple[type, bool]:
  """(type, None-able) of a leaf key; GridError for `seed`, a section or an unknown key."""
  if key == "seed":
    raise GridError("--grid=seed: give the seeds with --seeds")
  found = [f for f in (_find(base, key), _find(defaults, key)) if f]
  if not found:
    raise GridError(f"--grid={key}: unknown config key; {_hint(base, defaults, key)}")
  sections = [s[leaf] for s, leaf in found if isinstance(s[leaf], ml_collections.ConfigDict)]
  if sections:
    inner = [f"{key}.{k}" for k in _leaf_keys(sections[-1].to_dict())]  # the defaults'
    raise GridError(f"--grid={key}: a config section, not a key; sweep one of its keys: "
                    f"{', '.join(inner[:12])}{', ...' * (len(inner) > 12)}")
  nullable = any(section[leaf] is None for section, leaf in found)
  for section, leaf in found:  # placeholders carry the type of a None default
    kind = section.get_type(leaf)
    if kind is not type(None):
      return kind, nullable
  return str, nullable


def _hint(base: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
          key: str) -> str:
  """The nearest valid keys: the same name in another section, a close spelling, else the
  section's (or the top level's) keys."""
  known = sorted(set(_leaf_keys(base.to_dict())) | set(_leaf_keys(defaults.to_dict())))
  parent, _, leaf = key.rpartition(".")
  siblings = [k for k in known if k.rpartition(".")[0] == parent]
  near = [k for k in known if k.rpartition(".")[2] == leaf]
  if siblings:  # the section exists: a misspelt name in it
    near += [f"{parent}.{n}" if parent else n for n in difflib.get_close_matches(
        leaf, [k.rpartition(".")[2] for k in siblings], n=3, cutoff=0.75)]
  else:
    near += difflib.get_close_matches(key, known, n=3, cutoff=0.8)
  if near:
    return f"did you mean {', '.join(dict.fromkeys(near))}?"
  return f"valid keys of {parent or 'the top level'}: {', '.join(siblings)}"


def _parse(key: str, text: str, kind: type, nullable: bool) -> Any:
  if nullable and text == NONE:
    return None
  if kind is str:
    return text
  if kind not in (bool, int, float):
    raise GridError(f"--grid={key}: cannot sweep a key of type {kind.__name__}")
  if kind is bool:
    if text.lower() in ("true", "false"):
      return text.lower() == "true"
  else:
    try:
      return kind(text)
    except ValueError:
      pass
  what = {bool: "a bool", int: "an int", float: "a float"}[kind] + (f" or {NONE}" * nullable)
  raise GridError(f"--grid={key}: {text!r} is not {what} (the key's type)")


def _point_config(base: ml_collections.ConfigDict, values: Mapping[str, Any],
                  seed: int) -> ml_collections.ConfigDict:
  config = copy.deepcopy(base)  # keeps the placeholders' types; the CLI's copy is locked
  with config.unlocked():
    for key, value in {**values, "seed": seed}.items():
      *parents, leaf = key.split(".")
      node = config
      for part in parents:  # a base that omits a section (the defaults have every key)
        if part not in node:
          node[part] = ml_collections.ConfigDict()
        node = node[part]
      node[leaf] = value
  return config
