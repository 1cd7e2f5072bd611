#!/usr/bin/env python3
"""A 200-cell matrix on 1, 8, 16 and 64 GPUs (8 nodes x 8), simulated from measured times.

    python scripts/fleet_simulation.py [--root REPO] [--gpus 1 8 16 64]

Inputs, all read through gpushare.measure.results from committed indexes:
  results/h100/matrix/matrix.json        70 s windows, 3 scenarios x 3 levels (required)
  results/h100/matrix-long/matrix.json   310 s windows, same scenarios (if present)
  results/h200/interference/matrix.json  two-tenant phases (if present; where its cells
      carry no time, as in an index merged from per-GPU runs, the per-GPU indexes
      logs/matrix-*.json beside it are read instead)

Per source: start-up and stop per scenario (the invocations' server_start_s and server_stop_s
over the scenarios they started, each scenario started once), each cell's wall_s and
measured_s, and the invocations' time outside servers and cells (preflight, drain waits
between cells, bookkeeping), spread evenly over its cells as cell overhead.

The simulated matrix: 25 scenarios x 8 load levels = 200 cells: 15 scenarios with 70 s
windows, 5 with 310 s windows and 5 two-tenant scenarios, each family's measured cells
taken in turn. A campaign is mostly short sweeps; a few long-window scenarios (stable tails;
a matrix without --duration takes each config's own load.duration_s) are the long poles a
fleet has to deal with; the tenants bring two-server start-ups.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from gpushare.core.files import INDEX
from gpushare.fleet.simulate import Cell, Scenario, Schedule, simulate
from gpushare.measure.results import MatrixIndex, read_matrix_index

LEVELS = 8
MIX = (("short", 15), ("long", 5), ("tenants", 5))  # 25 scenarios
SOURCES = (("short", "results/h100/matrix", True), ("long", "results/h100/matrix-long", False),
           ("tenants", "results/h200/interference", False))
TIMED = ("complete", "skipped")  # a skipped cell keeps the times of the invocation that ran it


@dataclass(frozen=True)
class Family:
    """What one source measured, per scenario and per cell."""

    name: str
    files: tuple[str, ...]
    scenarios: int
    cells: tuple[Cell, ...]  # as measured
    start_s: float  # per scenario
    stop_s: float  # per scenario
    between_s: float  # per cell: invocation time outside servers and cells
    invocations: tuple[tuple[float, float, float, int], ...]  # wall, start, stop, cells run


def _indexes(root: Path, folder: str) -> list[tuple[str, MatrixIndex]]:
    """The folder's matrix.json, or, where none of its cells carries a time, its per-GPU
    indexes under logs/."""
    path = root / folder
    index = read_matrix_index(path)
    if index is None:
        return []
    if any(c.status in TIMED and c.wall_s > 0 for c in index.cells):
        return [(f"{folder}/{INDEX}", index)]
    found = []
    for part in sorted((path / "logs").glob("matrix-*.json")):
        try:
            found.append((str(part.relative_to(root)), MatrixIndex.model_validate_json(part.read_text())))
        except (OSError, ValueError):
            continue
    return found


def family_of(name: str, root: Path, folder: str) -> Family | None:
    indexes = _indexes(root, folder)
    cells = [c for _, index in indexes for c in index.cells if c.status in TIMED and c.wall_s > 0]
    if not cells:
        return None
    invocations = [i for _, index in indexes for i in index.invocations]
    scenarios = len({(file, c.scenario) for file, index in indexes for c in index.cells
                     if c.status in TIMED and c.wall_s > 0})
    start = math.fsum(i.server_start_s for i in invocations)
    stop = math.fsum(i.server_stop_s for i in invocations)
    cell_wall = math.fsum(c.wall_s for c in cells)
    rest = math.fsum(i.wall_s for i in invocations) - start - stop - cell_wall
    # Each timed cell ran in exactly one invocation, or the rest means nothing.
    between = rest / len(cells) if sum(i.cells_run for i in invocations) == len(cells) and rest > 0 else 0.0
    return Family(name=name, files=tuple(f for f, _ in indexes), scenarios=scenarios,
                  cells=tuple(Cell(c.wall_s, c.measured_s) for c in cells),
                  start_s=start / scenarios, stop_s=stop / scenarios, between_s=between,
                  invocations=tuple((i.wall_s, i.server_start_s, i.server_stop_s, i.cells_run) for i in invocations))


def matrix_of(families: dict[str, Family]) -> list[Scenario]:
    """25 scenarios x LEVELS cells; a family that is missing gives its share to `short`."""
    counts = {name: n for name, n in MIX if name in families}
    counts["short"] += sum(n for name, n in MIX if name not in families)
    scenarios = []
    for name, n in counts.items():
        f = families[name]
        pool = [Cell(c.wall_s + f.between_s, c.measured_s) for c in f.cells]
        for i in range(n):
            cells = tuple(pool[(i * LEVELS + j) % len(pool)] for j in range(LEVELS))
            scenarios.append(Scenario(f"{name}-{i + 1:02d}", cells, f.start_s, f.stop_s))
    return scenarios


def hmm(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def print_inputs(families: dict[str, Family]) -> None:
    print("Measured inputs (per scenario: invocations' server start/stop over the scenarios they started)")
    for f in families.values():
        print(f"\n  {f.name}: {', '.join(f.files)}")
        for wall, start, stop, run in f.invocations:
            print(f"    invocation: wall {wall:.1f} s, server start {start:.1f} s, stop {stop:.1f} s, {run} cells run")
        print(f"    {f.scenarios} scenarios, {len(f.cells)} cells")
        print(f"    start-up per scenario {f.start_s:.1f} s, stop per scenario {f.stop_s:.1f} s")
        print(f"    cell wall s, median [min-max]:        {spread([c.wall_s for c in f.cells])}")
        print(f"    cell window s:                         {spread([c.measured_s for c in f.cells])}")
        print(f"    cell warm-up + drain s:                {spread([c.overhead_s for c in f.cells])}")
        print(f"    between cells (per cell, outside servers and cells) {f.between_s:.1f} s")


def row(label: str, s: Schedule, one_gpu_s: float, policy: str | None = None) -> str:
    t = s.split.total_s
    shares = [s.split.startup_s, s.split.measurement_s, s.split.cell_overhead_s, s.split.stop_s, s.split.idle_s]
    return (f"| {label} | {policy or s.policy} | {s.tasks} | {hmm(s.makespan_s)} | {hmm(s.bounds.lower_s)} | "
            f"{one_gpu_s / s.makespan_s:.1f}x | {s.busy_fraction:.0%} | "
            + " | ".join(f"{v / t:.0%}" for v in shares) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the repository (holds results/)")
    parser.add_argument("--gpus", nargs="+", type=int, default=[1, 8, 16, 64])
    args = parser.parse_args(argv)
    families: dict[str, Family] = {}
    for name, folder, required in SOURCES:
        family = family_of(name, args.root, folder)
        if family is not None:
            families[name] = family
        elif required:
            print(f"no timed cells in {args.root / folder / INDEX}", file=sys.stderr)
            return 1
        else:
            print(f"({folder}: absent or without timed cells; its scenarios become short ones)")
    print_inputs(families)

    scenarios = matrix_of(families)
    cells = sum(len(s.cells) for s in scenarios)
    by_family: dict[str, list[Scenario]] = {}
    for s in scenarios:
        by_family.setdefault(s.name.rsplit("-", 1)[0], []).append(s)
    print(f"\nSimulated matrix: {len(scenarios)} scenarios x {LEVELS} levels = {cells} cells")
    for name, group in by_family.items():
        minutes = [s.work_s / 60 for s in group]
        print(f"  {len(group):2d} {name:8s} scenarios of {min(minutes):.1f}-{max(minutes):.1f} min each on one GPU")
    one_gpu = simulate(scenarios, 1).makespan_s
    print(f"  total work {hmm(one_gpu)} (h:mm) on one GPU\n")

    print("| GPUs | policy | tasks | makespan (h:mm) | lower bound | speed-up vs 1 GPU | busy | "
          "start-up | measurement | cell overhead | stop | idle |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    # The order a queue that ranks scenarios by cells left keeps here (all have LEVELS cells):
    # the configs' own, taken at its worst, the long-window scenarios last.
    long_last = sorted(scenarios, key=lambda s: s.name.startswith("long"))
    for gpus in args.gpus:
        label = f"{gpus} ({gpus // 8}x8)" if gpus > 8 and gpus % 8 == 0 else str(gpus)
        print(row(label, simulate(scenarios, gpus, "whole"), one_gpu))
        if 1 < gpus < len(scenarios):
            print(row(label, simulate(long_last, gpus, "listed"), one_gpu, "listed, long last"))
        if gpus > len(scenarios):
            print(row(label, simulate(scenarios, gpus, "sharded"), one_gpu))
    print("\nwhole: longest scenario first onto the GPU free earliest. listed, long last: the same queue in "
          "a given order, the long-window scenarios last.\nsharded: scenarios split over spare GPUs, each shard "
          "starting its servers again.\nstart-up ... idle: shares of GPU time (GPUs x makespan). Lower bound: "
          "the larger of work/GPUs and the longest scenario\n(whole, listed) or the longest single-cell shard "
          "(sharded).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
