"""A matrix's plan: its scenarios, each cell with the complete configuration it runs, and the
hash that tells whether a folder was measured under that configuration. Pure: nothing here
starts, measures or writes anything, so executors and searches share it (experiment.matrix
runs a plan; experiment.matrix_book records it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from ..config import ScenarioConfig, parse_config
from ..config_file import apply_overrides, read_config_file
from ..errors import ConfigError


@dataclass(frozen=True)
class Cell:
    scenario: str
    load_kind: str  # "concurrency" or "request_rate"
    load: float
    repeat: int

    @property
    def name(self) -> str:
        tag = f"c{self.load:g}" if self.load_kind == "concurrency" else f"r{self.load:g}"
        return f"{tag}_rep{self.repeat}"


def cells_for(scenario: str, concurrency: list[int], rates: list[float], repeats: int) -> list[Cell]:
    levels = [("concurrency", float(c)) for c in concurrency] + [("request_rate", float(r)) for r in rates]
    return [Cell(scenario, kind, value, rep) for kind, value in levels for rep in range(1, repeats + 1)]


def cell_config(config: ScenarioConfig, cell: Cell, n_requests: int | None, out: Path,
                per_concurrency: int | None = None, duration_s: float | None = None) -> ScenarioConfig:
    """The scenario at the cell's load; `per_concurrency` sizes closed-loop cells as
    K × concurrency requests (more at higher concurrency), never fewer than `n_requests`;
    `duration_s` bounds each cell by time instead (long cells keep start-ups a small share)."""
    raw = config.model_dump(mode="json")
    load = dict(raw["load"])
    if cell.load_kind == "concurrency":
        load.update(concurrency=int(cell.load), request_rate=None)
    else:
        load.update(request_rate=cell.load, concurrency=None)
    if per_concurrency is not None and cell.load_kind == "concurrency":
        n_requests = max(n_requests or 0, per_concurrency * int(cell.load))
    if n_requests is not None:
        load.update(n_requests=n_requests, duration_s=None)
    if duration_s is not None:
        load.update(duration_s=duration_s, n_requests=None)
    return parse_config({**raw, "load": load, "out": str(out), "seed": cell_seed(config.seed, cell)})


def cell_seed(seed: int, cell: Cell) -> int:
    """Every cell its own prompts, derived from the scenario's seed and the cell alone: a server
    reused across cells would otherwise find a cell's prompts in its prefix cache and skip
    their prefill (seen on vLLM: TTFT p50 68 ms for prompts an earlier cell had sent, 187 ms
    for new ones)."""
    kind = 0 if cell.load_kind == "concurrency" else 1
    entropy = [seed, kind, round(cell.load * 1000), cell.repeat]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


@dataclass(frozen=True)
class PlannedCell:
    """One cell of a plan: its name, what it varies, and the configuration it runs, complete."""

    name: str
    load_kind: str  # "concurrency", "request_rate", or "phase" (an interference run's solo or shared phase)
    load: float | None
    repeat: int
    config: ScenarioConfig
    label: str | None = None
    """How progress names it, where its load and repeat would not say it (a search's probe)."""

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


def config_hash(config: ScenarioConfig) -> str:
    """A stable hash of what a cell measures: its whole configuration (model, servers, sharing,
    workload, load and its size, tenants, SLOs, seed) without what may differ between two
    invocations of the same cell: its folder (out), the GPU an executor put it on (sharing.gpu;
    the cell's location records it) and the servers' ports. Values left at their defaults are
    left out, so a setting this version adds, at its default, does not change the hash."""
    # Set to their defaults rather than excluded: a model left at its defaults dumps as absent,
    # one that differs only in what is excluded would dump as {}.
    unplaced = config.model_copy(update={
        "out": type(config).model_fields["out"].default,
        "sharing": config.sharing.model_copy(update={"gpu": type(config.sharing).model_fields["gpu"].default}),
        "servers": [s.model_copy(update={"port": None}) for s in config.servers]})
    doc = unplaced.model_dump(mode="json", exclude_defaults=True)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class CellSearch(Protocol):
    """Cells found as they run: each next cell follows from how the ones before it came out
    (a capacity search). Its cells are a pure function of what is in their folders, so a
    resumed search asks for the same cells and reuses the finished ones."""

    def existing(self, folder: Path) -> list[PlannedCell]:
        """The cells it would ask for whose folders are already under `folder` (the scenario's)."""
        ...

    def cells(self, folder: Path, claim: Callable[[PlannedCell], bool]) -> Iterator[PlannedCell]:
        """Its cells to run, in order; `claim` says whether one must run (False: its folder
        holds it, measured under the same settings), and a cell's outcome is read from its
        folder once the next is asked for."""
        ...

    @property
    def budget(self) -> int:
        """Cells at most: for progress."""
        ...


@dataclass(frozen=True)
class ScenarioPlan:
    """A scenario whose servers start once and serve every one of its cells, in order: a
    fixed list, or the cells of a search, which follow from one another."""

    config: ScenarioConfig
    cells: list[PlannedCell]
    search: CellSearch | None = None


class Todo:
    """A scenario's cells still to run, in order, as executors take them: a fixed list, then,
    for a search, each next cell it finds (asked for only when the one before it has ended)."""

    def __init__(self, cells: list[PlannedCell], more: Iterator[PlannedCell] | None = None):
        self.known = list(cells)
        """The cells handed out or to be: a fixed list's all, a search's so far."""
        self._taken = 0
        self._more = more

    @property
    def grows(self) -> bool:
        """Whether cells may still follow the known ones."""
        return self._more is not None

    def _ahead(self) -> bool:
        if self._taken < len(self.known):
            return True
        if self._more is not None:
            cell = next(self._more, None)
            if cell is not None:
                self.known.append(cell)
                return True
            self._more = None
        return False

    def __bool__(self) -> bool:
        return self._ahead()

    def __iter__(self) -> Iterator[PlannedCell]:
        while self._ahead():
            self._taken += 1
            yield self.known[self._taken - 1]


def plan_matrix(configs: list[ScenarioConfig], concurrency: list[int], rates: list[float], repeats: int, out: Path,
                n_requests: int | None = None, per_concurrency: int | None = None,
                duration_s: float | None = None) -> list[ScenarioPlan]:
    """Every scenario at every load level and repeat: a pure plan, for an executor to run."""
    return [
        ScenarioPlan(config, [
            PlannedCell(cell.name, cell.load_kind, cell.load, cell.repeat,
                        cell_config(config, cell, n_requests, out / config.scenario / cell.name, per_concurrency,
                                    duration_s))
            for cell in cells_for(config.scenario, concurrency, rates, repeats)
        ])
        for config in configs
    ]


def load_scenarios(paths: list[Path], model: str | None) -> list[ScenarioConfig]:
    configs = [parse_config(apply_overrides(read_config_file(p), {"model": model})) for p in paths]
    names = [c.scenario for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--configs: two configs share a scenario name ({', '.join(names)})")
    return configs


def moved_to(config: ScenarioConfig, gpu: int) -> ScenarioConfig:
    """The configuration on GPU `gpu` (sharing.gpu): what an executor that owns several GPUs runs."""
    return config.model_copy(update={"sharing": config.sharing.model_copy(update={"gpu": gpu})})


def cell_on_gpu(cell: PlannedCell, gpu: int) -> PlannedCell:
    return replace(cell, config=moved_to(cell.config, gpu))


def on_gpu(plan: ScenarioPlan, gpu: int) -> ScenarioPlan:
    """The scenario moved to GPU `gpu`, every cell with it."""
    return replace(plan, config=moved_to(plan.config, gpu), cells=[cell_on_gpu(cell, gpu) for cell in plan.cells])
