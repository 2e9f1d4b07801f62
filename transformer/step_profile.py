"""Where a training step's time goes: a `jax.profiler` trace, attributed to the model's parts.

The CPU runtime records one trace event per executed HLO instruction (a fusion, a matmul,
a copy, a loop), named as in the compiled module. The compiled HLO text carries each
instruction's `op_name`: the JAX name stack, which holds the Flax module path (for example
`.../decoder_0/ffn_sublayer/norm/...`) and the transformation (`jvp(...)` forward,
`transpose(...)` backward). Each event's self time (its duration less the instructions
nested in it on the same thread) is summed per instruction, and instructions are grouped by
`category`. Events on different threads may overlap, so the table gives shares of the
summed op time, not of the wall time. What runs when is the other half of the story
(`running_at_once`): the share of the traced time with no instruction, one, or several
running, and each part's time running alone, which is where the step waits on it.

On CPU with several cores, XLA hands parts of some instructions (Eigen dots, large
elementwise fusions) to the thread pool and moves on: the event covers the part run in
place, and an `end: NAME` event marks when the last part finished, queueing included (the
Multi30k step's transposed logits gradient on two cores: a 10.6 ms event, its end 95.7 ms
after its start; 24.7 ms on one core). So on several cores op times are lower bounds and
"alone" counts the parts run in place; a one-core run (`taskset -c 0`) times every
instruction in full (BUILD_NOTES, issue 16).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re

import jax

# The parts of the step (the table lists them by op time, largest first).
VOCAB = "vocabulary: embedding, logits matmul, log-softmax, loss"
ATTENTION = "attention: projections, scores, softmax"
FFN = "feed-forward"
NORM = "LayerNorm"
DROPOUT = "dropout: random bits and masks"
EMBED = "positions, segments, masks"
MODEL_OTHER = "residual adds and other model ops"
OPTIMIZER = "optimizer: gradient all-reduce, Adam, clipping, metrics"
RUNTIME = "copies, collectives, loops"
CATEGORIES = (VOCAB, ATTENTION, FFN, NORM, DROPOUT, EMBED, MODEL_OTHER, OPTIMIZER, RUNTIME)

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\([^)]*\)|\S+) ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (op_name, output shape)} of every instruction of a compiled module."""
  out = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      op_name = _OP_NAME.search(line)
      out[match.group(1)] = (op_name.group(1) if op_name else "", match.group(2))
  return out


def category(op_name: str, shape: str, vocab_size: int) -> str:
  """The part of the step an instruction belongs to, from its name stack and shape."""
  name = op_name.lower()
  if not op_name:
    return RUNTIME
  differentiated = "transformer" in name or "jvp(" in name or "transpose(" in name
  if not differentiated:  # outside the loss's value_and_grad: the update and the metrics
    return OPTIMIZER
  if any(k in name for k in ("dropout", "bernoulli", "threefry", "random_bits")):
    return DROPOUT
  if "transformer" not in name:  # differentiated but outside the model: the loss
    return VOCAB
  if (any(k in name for k in ("attend", "log_softmax", "one_hot"))
      or re.search(r"_embed\b", name)  # target_embed, source_embed (not decode_embedded)
      or re.search(rf"[\[,]{vocab_size}[\],]", shape)):
    return VOCAB
  if "/norm" in name:
    return NORM
  if "attention" in name:
    return ATTENTION
  if "/ffn" in name:
    return FFN
  if any(k in name for k in ("position", "segment", "mask")):
    return EMBED
  return MODEL_OTHER


def self_times_ns(segments: list[tuple[int, int, str]]) -> dict[str, int]:
  """{name: summed self time in ns} from `instruction_segments`: an instruction's time less
  the instructions nested in it (the runtime's own events, such as the pool's, count as the
  instruction's time: it was running)."""
  totals: collections.Counter = collections.Counter()
  for start, end, name in segments:
    totals[name] += end - start
  return dict(totals)


def trace_events(trace_path: str) -> list[list[tuple[int, int, str]]]:
  """The events of every line (thread) of every plane of a `*.xplane.pb` trace."""
  profile = jax.profiler.ProfileData.from_file(trace_path)
  return [[(e.start_ns, e.duration_ns, e.name) for e in line.events]
          for plane in profile.planes for line in plane.lines]


def innermost_segments(events: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
  """One line's time as (start_ns, end_ns, name) pieces, each named by the innermost event
  open over it (events nest on a line: a loop holds its body's instructions)."""
  points = sorted({t for start, duration, _ in events for t in (start, start + duration)})
  ordered = sorted(events, key=lambda e: (e[0], -e[1]))
  segments, stack, i = [], [], 0
  for a, b in zip(points, points[1:]):
    while i < len(ordered) and ordered[i][0] <= a:
      stack.append((ordered[i][0] + ordered[i][1], ordered[i][2]))
      i += 1
    stack = [(end, name) for end, name in stack if end > a]
    if stack:
      segments.append((a, b, stack[-1][1]))
  return segments


def instruction_segments(lines: list[list[tuple[int, int, str]]], names: set[str]
                         ) -> list[tuple[int, int, str]]:
  """The `innermost_segments` of the events named in `names` (the instructions), line by
  line (each line a thread's list of (start_ns, duration_ns, name)); other events (the
  executor's, the pool's) neither count nor hide an instruction."""
  return [segment for events in lines
          for segment in innermost_segments([e for e in events if e[2] in names])]


def running_at_once(segments: list[tuple[int, int, str]]
                    ) -> tuple[dict[int, int], dict[str, int]]:
  """({0, 1, 2: ns with that many instructions running, 2 meaning 2 or more}, {name: ns it
  ran with no other instruction running}), from `instruction_segments`, from the first
  instruction's start to the last one's end."""
  edges = [edge for start, end, name in segments for edge in ((start, 1, name), (end, -1, name))]
  occupancy = {0: 0, 1: 0, 2: 0}
  alone: collections.Counter = collections.Counter()
  running: collections.Counter = collections.Counter()
  edges.sort(key=lambda e: (e[0], e[1]))  # at equal times, ends before starts
  for i, (t, delta, name) in enumerate(edges[:-1]):
    running[name] += delta
    if not running[name]:
      del running[name]
    count, dt = sum(running.values()), edges[i + 1][0] - t
    occupancy[min(count, 2)] += dt
    if count == 1:
      alone[next(iter(running))] += dt
  return occupancy, dict(alone)


@dataclasses.dataclass
class Row:
  category: str
  ms_per_step: float
  share: float
  top: list[tuple[str, float]]  # the largest instructions: (name: op_name, ms per step)
  alone_ms_per_step: float = 0.0  # time its instructions ran with no other one running


@dataclasses.dataclass
class Profile:
  rows: list[Row]               # by op time, largest first
  running: dict[int, float]     # {0, 1, 2 (or more): share of the traced time}


def breakdown(profile_dir: str, hlo_text: str, steps: int, vocab_size: int) -> Profile:
  """Op time per step by category, largest first, and how many instructions ran at once,
  from the newest trace under profile_dir."""
  traces = sorted(glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True),
                  key=os.path.getmtime)
  if not traces:
    raise FileNotFoundError(f"no *.xplane.pb trace under {profile_dir}")
  instructions = hlo_instructions(hlo_text)
  segments = instruction_segments(trace_events(traces[-1]), set(instructions))
  times = self_times_ns(segments)
  occupancy, alone = running_at_once(segments)
  part = {name: category(*instructions[name], vocab_size) for name in instructions}
  by_category: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
  for name, ns in times.items():
    op_name, shape = instructions[name]
    by_category[part[name]].append((f"{name} {shape}: {op_name}", ns / 1e6 / steps))
  alone_ms: collections.Counter = collections.Counter()
  for name, ns in alone.items():
    alone_ms[part[name]] += ns / 1e6 / steps
  ms_by_category = {c: sum(ms for _, ms in ops) for c, ops in by_category.items()}
  total = sum(ms_by_category.values()) or 1.0
  rows = [Row(c, ms_by_category[c], ms_by_category[c] / total,
              sorted(ops, key=lambda x: -x[1])[:3], alone_ms[c])
          for c, ops in by_category.items()]
  span = sum(occupancy.values()) or 1
  return Profile(sorted(rows, key=lambda r: -r.ms_per_step),
                 {k: ns / span for k, ns in occupancy.items()})


def report(profile: Profile, top: bool = True) -> str:
  """The breakdown as aligned lines (with each category's largest instructions)."""
  rows, r = profile.rows, profile.running
  lines = [f"{'op time per step':>17s}: {sum(x.ms_per_step for x in rows):.1f} ms summed over "
           "threads, by part of the step (alone: while no other instruction ran):"]
  for x in rows:
    lines.append(f"{100 * x.share:16.1f}%  {x.ms_per_step:8.1f} ms  (alone {x.alone_ms_per_step:6.1f}"
                 f" ms)  {x.category}")
    if top:
      lines += [f"{'':30s}{ms:8.1f} ms  {what[:140]}" for what, ms in x.top]
  lines.append(f"{'running at once':>17s}: no instruction {100 * r[0]:.0f}%, one {100 * r[1]:.0f}%,"
               f" two or more {100 * r[2]:.0f}% of the traced time")
  return "\n".join(lines)
