"""How a fleet of whole GPUs would run a matrix: a small discrete-event simulation.

A scenario needs one whole GPU. It pays its servers' start-up, runs its cells one after
another (each cell's wall time: warm-up, measurement window, drain), then its servers' stop.
Policies:

- ``whole``: longest scenario first onto the GPU that is free earliest (LPT list
  scheduling): what a queue of whole-GPU tasks (Ray's, for one) achieves when it knows the
  job in full and starts the longest first, within 4/3 of the best possible order;
- ``listed``: the same, but in the order given (a queue that does not know which scenarios
  are long);
- ``sharded``: where there are more GPUs than scenarios, the scenario whose shard is the
  longest gives up cells to a new shard on a GPU of its own (each shard pays start-up and
  stop again), until the GPUs run out or no split shortens the matrix; then as ``whole``.

Pure functions over frozen dataclasses; times in seconds.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Literal, Sequence

Policy = Literal["whole", "listed", "sharded"]


@dataclass(frozen=True)
class Cell:
    """One cell: its wall time (warm-up, measurement window, drain) and the window's share."""

    wall_s: float
    measured_s: float

    def __post_init__(self) -> None:
        if not (0 <= self.measured_s <= self.wall_s < math.inf):
            raise ValueError(f"a cell needs 0 <= measured_s <= wall_s: {self}")

    @property
    def overhead_s(self) -> float:
        """Time of the cell outside its measurement window."""
        return self.wall_s - self.measured_s


@dataclass(frozen=True)
class Scenario:
    """A sharing mode with its servers: start-up once, its cells in order, then stop."""

    name: str
    cells: tuple[Cell, ...]
    start_s: float
    stop_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.cells:
            raise ValueError(f"scenario {self.name} has no cells")
        if not (0 <= self.start_s < math.inf and 0 <= self.stop_s < math.inf):
            raise ValueError(f"scenario {self.name}: start_s and stop_s must be >= 0")

    @property
    def work_s(self) -> float:
        return task_of(self, self.cells, 0, 1).duration_s


@dataclass(frozen=True)
class Task:
    """What one GPU runs in one go: a whole scenario, or a shard of its cells."""

    scenario: str
    shard: int  # 0-based
    shards: int
    cells: tuple[Cell, ...]
    start_s: float
    stop_s: float

    @property
    def cells_s(self) -> float:
        return math.fsum(c.wall_s for c in self.cells)

    @property
    def duration_s(self) -> float:
        return self.start_s + self.cells_s + self.stop_s


def task_of(scenario: Scenario, cells: Sequence[Cell], shard: int, shards: int) -> Task:
    return Task(scenario.name, shard, shards, tuple(cells), scenario.start_s, scenario.stop_s)


@dataclass(frozen=True)
class Placement:
    task: Task
    gpu: int
    begin_s: float

    @property
    def end_s(self) -> float:
        return self.begin_s + self.task.duration_s


@dataclass(frozen=True)
class TimeSplit:
    """GPU time (GPUs x makespan) by what it went to."""

    startup_s: float
    measurement_s: float
    cell_overhead_s: float  # warm-up and drain: cell wall time outside the window
    stop_s: float
    idle_s: float

    @property
    def busy_s(self) -> float:
        return self.startup_s + self.measurement_s + self.cell_overhead_s + self.stop_s

    @property
    def total_s(self) -> float:
        return self.busy_s + self.idle_s


@dataclass(frozen=True)
class Bounds:
    """No schedule of these scenarios on these GPUs ends sooner than `lower_s`."""

    work_s: float  # start-up, cells and stop of every scenario, each started once
    per_gpu_s: float  # work_s / GPUs
    longest_s: float  # the longest scenario (whole) or the longest single-cell shard (sharded)

    @property
    def lower_s(self) -> float:
        return max(self.per_gpu_s, self.longest_s)


@dataclass(frozen=True)
class Schedule:
    policy: Policy
    gpus: int
    placements: tuple[Placement, ...]
    makespan_s: float
    split: TimeSplit
    bounds: Bounds

    @property
    def busy_fraction(self) -> float:
        return self.split.busy_s / self.split.total_s if self.split.total_s > 0 else 0.0

    @property
    def tasks(self) -> int:
        return len(self.placements)


def total_work(scenarios: Sequence[Scenario]) -> float:
    return math.fsum(s.work_s for s in scenarios)


def list_schedule(tasks: Sequence[Task], gpus: int) -> tuple[Placement, ...]:
    """Each task in turn onto the GPU free earliest (the lowest-numbered on a tie)."""
    if gpus < 1:
        raise ValueError("gpus must be >= 1")
    free: list[tuple[float, int]] = [(0.0, g) for g in range(gpus)]
    placed = []
    for task in tasks:
        at, gpu = heapq.heappop(free)
        placement = Placement(task, gpu, at)
        placed.append(placement)
        heapq.heappush(free, (placement.end_s, gpu))
    return tuple(placed)


def lpt(tasks: Sequence[Task], gpus: int) -> tuple[Placement, ...]:
    """Longest task first (LPT), each onto the GPU free earliest."""
    return list_schedule(sorted(tasks, key=lambda t: (-t.duration_s, t.scenario, t.shard)), gpus)


def split_cells(cells: Sequence[Cell], parts: int) -> tuple[tuple[Cell, ...], ...]:
    """`cells` in `parts` runs of consecutive cells (load order kept), the longest run as short
    as it can be (exact, by dynamic programming; ties go to the earliest cut)."""
    n = len(cells)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} cells into {parts} shards")
    prefix = [0.0]
    for c in cells:
        prefix.append(prefix[-1] + c.wall_s)
    inf = math.inf
    # best[k][j]: the least possible longest run when the first j cells form k runs
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                value = max(best[k - 1][i], prefix[j] - prefix[i])
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    runs: list[tuple[Cell, ...]] = []
    j = n
    for k in range(parts, 0, -1):
        i = cut[k][j]
        runs.append(tuple(cells[i:j]))
        j = i
    return tuple(reversed(runs))


def shards_of(scenario: Scenario, parts: int) -> tuple[Task, ...]:
    return tuple(task_of(scenario, run, i, parts) for i, run in enumerate(split_cells(scenario.cells, parts)))


def _longest(scenario: Scenario, parts: int) -> float:
    return max(t.duration_s for t in shards_of(scenario, parts))


def shard_counts(scenarios: Sequence[Scenario], gpus: int) -> tuple[int, ...]:
    """How many shards each scenario gets: one each where GPUs are no more than scenarios;
    otherwise the scenario with the longest shard splits once more while a GPU is left and
    it has a cell to give; at the end each scenario keeps the fewest shards that still end
    by the longest shard of all (a split that shortens nothing costs a start-up)."""
    counts = [1] * len(scenarios)
    if gpus <= len(scenarios):
        return tuple(counts)
    longest = [s.work_s for s in scenarios]
    while sum(counts) < gpus:
        worst = max(range(len(scenarios)), key=lambda i: (longest[i], -i))
        if counts[worst] == len(scenarios[worst].cells):
            break  # the matrix can end no sooner than this scenario's single-cell shard
        counts[worst] += 1
        longest[worst] = _longest(scenarios[worst], counts[worst])
    makespan = max(longest)  # each shard has a GPU of its own
    for i, scenario in enumerate(scenarios):  # fewest shards that end by then
        while counts[i] > 1 and _longest(scenario, counts[i] - 1) <= makespan:
            counts[i] -= 1
    return tuple(counts)


def bounds_of(scenarios: Sequence[Scenario], gpus: int, policy: Policy) -> Bounds:
    work = total_work(scenarios)
    if policy != "sharded":
        longest = max(s.work_s for s in scenarios)
    else:  # a cell is never split: its scenario's start-up, the cell and the stop, on one GPU
        longest = max(s.start_s + max(c.wall_s for c in s.cells) + s.stop_s for s in scenarios)
    longest = float(longest)
    return Bounds(work_s=work, per_gpu_s=work / gpus, longest_s=longest)


def split_of(placements: Sequence[Placement], gpus: int, makespan: float) -> TimeSplit:
    tasks = [p.task for p in placements]
    startup = math.fsum(t.start_s for t in tasks)
    stop = math.fsum(t.stop_s for t in tasks)
    measurement = math.fsum(c.measured_s for t in tasks for c in t.cells)
    overhead = math.fsum(c.overhead_s for t in tasks for c in t.cells)
    busy = math.fsum([startup, stop, measurement, overhead])
    return TimeSplit(startup_s=startup, measurement_s=measurement, cell_overhead_s=overhead, stop_s=stop,
                     idle_s=max(0.0, gpus * makespan - busy))


def simulate(scenarios: Sequence[Scenario], gpus: int, policy: Policy = "whole") -> Schedule:
    """The matrix's schedule on `gpus` interchangeable GPUs under `policy`."""
    if not scenarios:
        raise ValueError("no scenarios")
    if gpus < 1:
        raise ValueError("gpus must be >= 1")
    if policy not in ("whole", "listed", "sharded"):
        raise ValueError(f"unknown policy {policy!r}")
    counts = shard_counts(scenarios, gpus) if policy == "sharded" else (1,) * len(scenarios)
    tasks = [t for s, k in zip(scenarios, counts) for t in shards_of(s, k)]
    placements = list_schedule(tasks, gpus) if policy == "listed" else lpt(tasks, gpus)
    makespan = max(p.end_s for p in placements)
    return Schedule(policy=policy, gpus=gpus, placements=placements, makespan_s=makespan,
                    split=split_of(placements, gpus, makespan), bounds=bounds_of(scenarios, gpus, policy))
