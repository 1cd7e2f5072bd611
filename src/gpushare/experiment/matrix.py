"""Experiment matrices: every scenario at every load level (and repeat), each cell its own run
folder, with a scenario's servers started once and reused by all its cells.

A vLLM start costs more than most cells, so restarting servers per cell would spend most of
the matrix outside measurement windows. The matrix is resumable: a cell whose folder holds a
complete run measured under the settings planned now is skipped, an incomplete one is redone
(its folder kept beside it as an earlier attempt); a complete cell measured under other
settings is refused unless asked to be redone. A failed cell is recorded and the matrix goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator, Protocol

import numpy as np
from rich.console import Console

from ..config import ScenarioConfig, apply_overrides, parse_config, read_config_file
from ..core.files import TRACEBACK
from ..errors import ConfigError, GpushareError
from ..interrupts import Interrupted, Interrupts
from ..measure.results import (CellCounts, CellEntry, Invocation, Location, MatrixIndex, SupersededAttempt, Verdict,
                      read_matrix_index, read_run_config, read_verdict, write_matrix_index, write_superseded)
from ..load.workload import load_tokenizer
from ..registry import Registry
from .matrix_events import CellFinished, CellStarted, MatrixEvent, ServersTimed
from .run.console import say
from .run.preflight import Prepared, preflight
from .run.run import INTERRUPTED_EXIT, run_scenario
from .run.servers import ScenarioServers

DRAIN_S = 2.0  # at most, between cells: until every server says it holds no request


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


def cell_entry(scenario: str, cell: PlannedCell, folder: Path, status: str, error: str | None = None,
               wall_s: float = 0.0, measured_s: float = 0.0, location: Location | None = None) -> CellEntry:
    """A planned cell's entry in matrix.json."""
    return CellEntry(scenario=scenario, cell=cell.name, load_kind=cell.load_kind, load=cell.load, repeat=cell.repeat,
                     run_dir=str(folder), status=status, error=error, wall_s=wall_s, measured_s=measured_s,
                     location=location, config_hash=cell.config_hash)


def previous_index(out: Path) -> tuple[dict[tuple[str, str], CellEntry], list[Invocation], list[SupersededAttempt]]:
    """An earlier invocation's cells (by scenario and cell), invocation records and attempts set aside."""
    index = read_matrix_index(out)
    if index is None:
        return {}, [], []
    return {(c.scenario, c.cell): c for c in index.cells}, index.invocations, index.superseded


def recorded_hash(folder: Path, earlier: CellEntry | None) -> str | None:
    """The settings a cell's folder was measured under: its index entry's hash, or for an entry
    written before entries had one (or none at all), the hash of the folder's config.yaml; None
    where neither says (the config no longer reads under this version's schema)."""
    if earlier is not None and earlier.config_hash is not None:
        return earlier.config_hash
    config = read_run_config(folder)
    return None if config is None else config_hash(config)


def set_aside(folder: Path, attempt: SupersededAttempt) -> SupersededAttempt:
    """An earlier attempt's folder renamed beside it, CELL.attempt-N (the first N free), marked
    superseded first, so that an interruption between the two never leaves a folder that
    counts; the attempt, with where it is now. Nothing collected is deleted."""
    n = 1
    while (target := folder.with_name(f"{folder.name}.attempt-{n}")).exists():
        n += 1
    kept = attempt.model_copy(update={"run_dir": str(target)})
    write_superseded(folder, kept)
    folder.rename(target)
    return kept


def kept_cell(out: Path, earlier: CellEntry) -> CellEntry:
    """An earlier invocation's cell, as it stands on disk now."""
    folder = out / earlier.scenario / earlier.cell
    update: dict[str, object] = {"run_dir": str(folder)}
    if read_verdict(folder).complete:
        update["status"] = "skipped"
    elif earlier.status in ("complete", "skipped"):
        update.update(status="not_run", measured_s=0.0)  # its folder is gone or incomplete now
    return earlier.model_copy(update=update)


def load_scenarios(paths: list[Path], model: str | None) -> list[ScenarioConfig]:
    configs = [parse_config(apply_overrides(read_config_file(p), {"model": model})) for p in paths]
    names = [c.scenario for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--configs: two configs share a scenario name ({', '.join(names)})")
    return configs


def _preload_tokenizer(path: str) -> None:
    try:
        load_tokenizer(path)
    except GpushareError:
        pass  # the first cell loads it again and reports the error there


def moved_to(config: ScenarioConfig, gpu: int) -> ScenarioConfig:
    """The configuration on GPU `gpu` (sharing.gpu): what an executor that owns several GPUs runs."""
    return config.model_copy(update={"sharing": config.sharing.model_copy(update={"gpu": gpu})})


def cell_on_gpu(cell: PlannedCell, gpu: int) -> PlannedCell:
    return replace(cell, config=moved_to(cell.config, gpu))


def on_gpu(plan: ScenarioPlan, gpu: int) -> ScenarioPlan:
    """The scenario moved to GPU `gpu`, every cell with it."""
    return replace(plan, config=moved_to(plan.config, gpu), cells=[cell_on_gpu(cell, gpu) for cell in plan.cells])


def run_matrix(configs: list[ScenarioConfig], concurrency: list[int], rates: list[float], repeats: int,
               out: Path, n_requests: int | None = None, console: Console | None = None,
               per_concurrency: int | None = None, duration_s: float | None = None,
               interrupts: Interrupts | None = None, executor: "Executor | None" = None,
               redo_changed: bool = False) -> tuple[MatrixIndex, int]:
    """Run every cell; returns the matrix index (also written to out/matrix.json) and an exit code."""
    plan = plan_matrix(configs, concurrency, rates, repeats, out, n_requests, per_concurrency, duration_s)
    return run_plan(plan, out, console, interrupts, executor, redo_changed)


class Executor:
    """Runs a plan's scenarios, each on one whole GPU, reporting every cell to the book. Each
    executor registers (`@EXECUTORS.register(NAME)`) and declares the `matrix` flags it reads;
    its own flag chooses it, and `here` runs when no flag chooses another."""

    flag: ClassVar[str | None] = None
    """The flag that chooses this executor (`--gpus`); None for `here`, chosen by no flag."""
    where: ClassVar[str] = "here"
    """Where it runs the scenarios, in the line that refuses two executors at once."""

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """Declare the flags this executor reads."""

    @classmethod
    def chosen(cls, flags: argparse.Namespace) -> bool:
        return cls.flag is not None and getattr(flags, cls.flag.removeprefix("--").replace("-", "_")) is not None

    @classmethod
    def check_flags(cls, flags: argparse.Namespace) -> None:
        """Raise ConfigError where this executor's flags are given wrongly (or without it)."""

    @classmethod
    def from_flags(cls, flags: argparse.Namespace, console: Console, interrupts: Interrupts) -> "Executor":
        """The executor the flags describe; a ConfigError (before the matrix's folder exists)
        where this machine cannot run it."""
        raise NotImplementedError

    def run(self, work: list[tuple[ScenarioPlan, Todo]], book: "MatrixBook") -> None:
        raise NotImplementedError


EXECUTORS: Registry[Executor] = Registry("executor")
"""Where a matrix runs: `here`, and the executors of gpushare.fleet, each in a module of its own."""


def run_plan(plan: list[ScenarioPlan], out: Path, console: Console | None = None,
             interrupts: Interrupts | None = None, executor: Executor | None = None,
             redo_changed: bool = False) -> tuple[MatrixIndex, int]:
    """Run a plan with an executor (default: here, one scenario after another), each cell its
    own run folder under out/SCENARIO/CELL, indexed in out/matrix.json, resumable. A complete
    cell measured under other settings is refused (ConfigError) before anything runs, unless
    `redo_changed`. A signal stops it after the cell it interrupts (or at once between cells);
    the cells it did not reach are indexed as not run."""
    console = console or Console(stderr=True)
    interrupts = interrupts or Interrupts()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-check").touch()
        (out / ".write-check").unlink()
    except OSError as err:
        raise ConfigError(f"--out: cannot write to {out}: {err.strerror or err}") from None
    with interrupts.deferred():  # signals act only at checkpoints, never mid-bookkeeping
        book = MatrixBook(out, plan, console, redo_changed)
        book.refuse_changed(plan)
        work = [(scenario, book.todo(scenario)) for scenario in plan]
        (executor or HereExecutor(console, interrupts)).run([(s, todo) for s, todo in work if todo], book)
        return book.close(), book.exit_code


class MatrixBook:
    """The driver's side of a matrix: matrix.json and progress. Executors, wherever their cells
    run, report typed events (`publish`); the book records each finished cell at once, so an
    invocation killed at any point leaves an index of what it finished. Thread-safe: executors
    that run scenarios side by side report from several threads."""

    def __init__(self, out: Path, plan: list[ScenarioPlan], console: Console, redo_changed: bool = False):
        self.out = out
        self.console = console
        self.redo_changed = redo_changed
        self.earlier, self.history, self.superseded = previous_index(out)
        planned = {(scenario.config.scenario, cell.name) for scenario in plan for cell in self.cells_of(scenario)}
        # Cells of earlier invocations that this one does not plan (other configs or levels) stay indexed.
        self.results = [kept_cell(out, c) for key, c in self.earlier.items() if key not in planned]
        self.total = sum(len(s.cells) if s.search is None else s.search.budget for s in plan)
        self.indexed = self.total + len(self.results)
        self.now = Invocation()
        self.began = time.monotonic()
        self.exit_code = 0
        self.stopped = False
        self.done_cells = 0
        self._cell_time = 0.0  # over the cells this invocation ran (now.cells_run)
        self._running: dict[str, str] = {}  # scenario -> where it runs and which cell, while one runs
        self._lock = threading.RLock()

    def folder(self, scenario: str, cell: str) -> Path:
        return self.out / scenario / cell

    def cells_of(self, scenario: ScenarioPlan) -> list[PlannedCell]:
        """The plan's cells, or those of its search whose folders exist already."""
        if scenario.search is None:
            return scenario.cells
        return scenario.search.existing(self.out / scenario.config.scenario)

    def changed(self, plan: list[ScenarioPlan]) -> list[str]:
        """The complete cells measured under other settings than planned now (or under settings
        that cannot be told), each as SCENARIO/CELL."""
        found = []
        for scenario in plan:
            name = scenario.config.scenario
            for cell in self.cells_of(scenario):
                verdict, recorded = self._measured(name, cell)
                if verdict.complete and recorded != cell.config_hash:
                    found.append(f"{name}/{cell.name}" + (" (settings not recorded)" if recorded is None else ""))
        return found

    def _measured(self, scenario: str, cell: PlannedCell) -> tuple[Verdict, str | None]:
        """The verdict of the cell's folder and, where complete, the settings it was measured under."""
        folder = self.folder(scenario, cell.name)
        verdict = read_verdict(folder)
        return verdict, recorded_hash(folder, self.earlier.get((scenario, cell.name))) if verdict.complete else None

    def refuse_changed(self, plan: list[ScenarioPlan]) -> None:
        """Before anything runs or moves: a cell measured under other settings is not reused,
        nor redone unless asked."""
        changed = self.changed(plan)
        if changed and not self.redo_changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise ConfigError(f"--out {self.out}: {len(changed)} complete cell(s) were measured under other settings "
                              f"than planned now: {shown}; give --redo-changed to measure them again (the earlier "
                              "runs are kept beside them as CELL.attempt-N), or a fresh --out")

    def todo(self, scenario: ScenarioPlan) -> Todo:
        """The scenario's cells still to run (`claim`); a search's are claimed as it finds them."""
        name = scenario.config.scenario
        if scenario.search is not None:
            return Todo([], scenario.search.cells(self.out / name, lambda cell: self.claim(name, cell)))
        return Todo([cell for cell in scenario.cells if self.claim(name, cell)])

    def claim(self, name: str, cell: PlannedCell) -> bool:
        """Whether the cell must run. A complete one measured under the planned settings is
        recorded as skipped; any other folder it has is set aside as an earlier attempt (a
        complete one only with redo_changed: refuse_changed came first)."""
        folder = self.folder(name, cell.name)
        before = self.earlier.get((name, cell.name))
        verdict, recorded = self._measured(name, cell)
        if verdict.complete and recorded == cell.config_hash:
            self._record(cell_entry(name, cell, folder, "skipped", wall_s=before.wall_s if before else 0.0,
                                    measured_s=before.measured_s if before else 0.0,
                                    location=before.location if before else None))
            with self._lock:
                self.done_cells += 1
            return False
        if folder.is_dir() and any(folder.iterdir()):
            reason = "measured under other settings than planned now" if verdict.complete else verdict.reason
            self._set_aside(folder, SupersededAttempt(scenario=name, cell=cell.name, run_dir=str(folder),
                                                      reason=reason, config_hash=recorded))
        elif folder.is_dir():
            folder.rmdir()  # an empty folder: nothing was collected
        return True

    def _set_aside(self, folder: Path, attempt: SupersededAttempt) -> None:
        kept = set_aside(folder, attempt)
        say(self.console, f"{kept.scenario} {kept.cell}: the earlier attempt ({kept.reason}) is kept in {kept.run_dir}")
        with self._lock:
            self.superseded.append(kept)

    def publish(self, event: MatrixEvent) -> None:
        with self._lock:
            if isinstance(event, CellStarted):
                ran = self.now.cells_run
                eta = "" if not ran else f", ETA {(self.total - self.done_cells) * self._cell_time / ran:.0f} s"
                where = f" on {event.where}" if event.where else ""
                self._running[event.scenario] = f"{event.where}: {event.scenario} {event.cell}"
                others = [line for name, line in self._running.items() if name != event.scenario]
                also = f" | also running: {'; '.join(others)}" if others else ""
                say(self.console,
                    f"[{self.done_cells + 1}/{self.total}] {event.scenario} {event.cell}{where}{eta}{also}")
            elif isinstance(event, CellFinished):
                entry = event.entry.model_copy(update={"run_dir": str(self.folder(event.entry.scenario,
                                                                                  event.entry.cell))})
                if entry.status in ("complete", "failed") and entry.wall_s > 0:
                    self._cell_time += entry.wall_s
                    self.now.cells_run += 1
                self.done_cells += entry.status in ("complete", "failed")
                self._running.pop(entry.scenario, None)
                self._record(entry)
                if event.exit_code == INTERRUPTED_EXIT:
                    self.stopped, self.exit_code = True, INTERRUPTED_EXIT
                elif event.exit_code:
                    self.exit_code = self.exit_code or event.exit_code
            elif event.what == "start":
                self.now.server_start_s += event.seconds
            else:
                self.now.server_stop_s += event.seconds

    def stop(self) -> None:
        """A signal: cells not started from now on are recorded as not run."""
        with self._lock:
            self.stopped, self.exit_code = True, INTERRUPTED_EXIT

    def _record(self, entry: CellEntry) -> None:
        with self._lock:
            self.results.append(entry)
            write_index(self.out, self.results, self.history, self.now, self.began, self.indexed, self.superseded)

    def close(self) -> MatrixIndex:
        with self._lock:
            return write_index(self.out, self.results, self.history, self.now, self.began, self.indexed,
                               self.superseded)


class ScenarioReport:
    """A scenario's events on their way to the book, noting which cells have ended, so that
    whoever runs the scenario (here, a worker process, a Ray actor) reports every cell left
    over, once, however the scenario stopped."""

    def __init__(self, scenario: str, todo: Todo | list[PlannedCell], publish: Callable[[MatrixEvent], None]):
        self.scenario = scenario
        self.todo = todo if isinstance(todo, Todo) else Todo(todo)
        self._publish = publish
        self.ended: set[str] = set()
        self.started = False  # a cell has started and not yet ended

    def __call__(self, event: MatrixEvent) -> None:
        if isinstance(event, CellFinished):
            self.ended.add(event.entry.cell)
            self.started = False
        elif isinstance(event, CellStarted):
            self.started = True
        self._publish(event)

    def left(self) -> list[PlannedCell]:
        """The cells handed out (a fixed list: all of them) that have not ended."""
        return [cell for cell in self.todo.known if cell.name not in self.ended]

    def under_way(self) -> PlannedCell | None:
        """The cell that started and did not end (cells run in order: the first one left)."""
        left = self.left()
        return left[0] if self.started and left else None

    def rest(self, status: str, error: str, exit_code: int = 0) -> None:
        """The cells that got no run of their own, recorded with `status` and why."""
        for cell in self.left():
            self(CellFinished(entry=cell_entry(self.scenario, cell, Path(self.scenario) / cell.name, status, error),
                              exit_code=exit_code))

    def lost(self, reason: str, under_way: PlannedCell | None) -> None:
        """Whatever ran the scenario (a worker process, a Ray actor) died: the cell under way
        failed with it, the cells it never began were not run; every executor says so alike."""
        if under_way is not None:
            ScenarioReport(self.scenario, [under_way], self).rest("failed", reason, 1)
        self.rest("not_run", f"not begun: scenario {self.scenario} {reason}", 1)


class ScenarioSession:
    """One scenario on this machine: its servers, started once, and the cells they serve, one
    after another, each into root/SCENARIO/CELL. Used by every executor, here or on a node
    of a cluster; what happens is told through `publish`."""

    def __init__(self, plan: ScenarioPlan, root: Path, console: Console, interrupts: Interrupts,
                 publish: Callable[[MatrixEvent], None], where: str = ""):
        self.config = plan.config
        self.cells = plan.cells
        self.root = root
        self.console = console
        self.interrupts = interrupts
        self.publish = publish
        self.where = where
        self.servers: ScenarioServers | None = None
        self.prepared: Prepared | None = None

    @property
    def scenario_dir(self) -> Path:
        return self.root / self.config.scenario

    def __enter__(self) -> "ScenarioSession":
        config = self.config
        self.scenario_dir.mkdir(parents=True, exist_ok=True)
        self.prepared = prepared = preflight(config, lambda m: say(self.console, m),
                                             [cell.config for cell in self.cells])
        # The tokenizer loads (seconds, the first time in a process) while the servers start.
        tokenizer = threading.Thread(target=_preload_tokenizer, daemon=True,
                                     args=(config.tokenizer or prepared.models[0].path,))
        tokenizer.start()
        t_start = time.monotonic()
        self.servers = ScenarioServers(config, prepared, self.scenario_dir, self.console, self.interrupts)
        self.servers.__enter__()
        self.publish(ServersTimed(what="start", seconds=time.monotonic() - t_start))
        tokenizer.join()
        return self

    def run_cell(self, cell: PlannedCell) -> CellFinished:
        """One cell, into its own folder (the book set any earlier attempt aside: `MatrixBook.todo`)."""
        assert self.servers is not None and self.prepared is not None
        self.interrupts.checkpoint()  # a signal that came while the last cell was ending
        folder = self.scenario_dir / cell.name
        what = cell.label or cell.name if cell.load is None or cell.label else \
            f"{cell.load_kind} {cell.load:g} repeat {cell.repeat}"
        self.publish(CellStarted(scenario=self.config.scenario, cell=what, where=self.where))
        t0 = time.monotonic()
        outcome = run_scenario(cell.config, self.console, self.servers, folder, self.prepared, self.interrupts)
        wall = time.monotonic() - t0
        verdict = outcome.summary.verdict
        complete = verdict.complete and outcome.exit_code == 0
        finished = CellFinished(
            entry=cell_entry(self.config.scenario, cell, folder, "complete" if complete else "failed", verdict.error,
                             wall, outcome.summary.duration if complete else 0.0, outcome.summary.location),
            exit_code=outcome.exit_code or (0 if complete else 1))
        self.publish(finished)
        return finished

    def drain(self) -> None:
        """Between cells: the last cell's requests leave the servers."""
        assert self.servers is not None and self.servers.fleet is not None
        with self.interrupts.interruptible():
            self.servers.fleet.wait_idle(DRAIN_S)

    def __exit__(self, *exc: object) -> None:
        if self.servers is not None:
            t_stop = time.monotonic()
            self.servers.close()
            self.publish(ServersTimed(what="stop", seconds=time.monotonic() - t_stop))


def run_scenario_here(plan: ScenarioPlan, todo: Todo, root: Path, console: Console,
                      interrupts: Interrupts, publish: Callable[[MatrixEvent], None], where: str = "") -> None:
    """A scenario's cells on this machine, each reported as it ends. A failed scenario (its
    servers did not start, a defect) fails its remaining cells and is recorded; a signal
    stops it after the cell it interrupts, the rest recorded as not run."""
    name = plan.config.scenario
    report = ScenarioReport(name, todo, publish)
    mark = interrupts.mark()
    session = ScenarioSession(plan, root, console, interrupts, report, where)
    try:
        interrupts.checkpoint()  # a signal that came during the last scenario's clean-up
        with session:
            for position, cell in enumerate(todo):
                if position:
                    session.drain()
                if session.run_cell(cell).exit_code == INTERRUPTED_EXIT:
                    break
        if interrupts.since(mark):
            report.rest("not_run", "the matrix was interrupted", INTERRUPTED_EXIT)
    except Interrupted:
        report.rest("not_run", "the matrix was interrupted", INTERRUPTED_EXIT)
    except Exception as err:  # this scenario failed (a defect included): record it, go on
        if not isinstance(err, GpushareError):
            session.scenario_dir.mkdir(parents=True, exist_ok=True)
            (session.scenario_dir / TRACEBACK).write_text(traceback.format_exc())
        if interrupts.signal_since(mark):  # an Interrupted that came out wrapped
            report.rest("not_run", "the matrix was interrupted", INTERRUPTED_EXIT)
            return
        reason = str(err) if isinstance(err, GpushareError) else f"{type(err).__name__}: {err}"
        say(console, f"scenario {name} failed: {reason}")
        report.rest("failed", reason, 1)


@EXECUTORS.register("here")
class HereExecutor(Executor):
    """This machine, one scenario after another, on each scenario's own sharing.gpu."""

    def __init__(self, console: Console, interrupts: Interrupts):
        self.console = console
        self.interrupts = interrupts

    @classmethod
    def from_flags(cls, flags: argparse.Namespace, console: Console, interrupts: Interrupts) -> "HereExecutor":
        return cls(console, interrupts)

    def run(self, work: list[tuple[ScenarioPlan, Todo]], book: MatrixBook) -> None:
        for plan, todo in work:
            if book.stopped:
                ScenarioReport(plan.config.scenario, todo, book.publish).rest("not_run", "the matrix was interrupted")
                continue
            run_scenario_here(plan, todo, book.out, self.console, self.interrupts, book.publish)


def write_index(out: Path, results: list[CellEntry], history: list[Invocation], now: Invocation,
                began: float, total: int, superseded: Iterable[SupersededAttempt] = ()) -> MatrixIndex:
    """matrix.json: every cell, and the matrix's wall time over all its invocations with the
    share inside measurement windows (cells measured in earlier invocations count there).
    Earlier invocations are written as they were recorded."""
    now.wall_s = time.monotonic() - began
    now.measured_s = sum(r.measured_s for r in results if r.status == "complete")
    wall = sum(i.wall_s for i in [*history, now])
    measured = sum(r.measured_s for r in results)
    return write_matrix_index(out, {
        "cells": [r.model_dump(exclude_unset=True) for r in results],
        "planned_cells": total,
        "wall_s": wall,
        "measured_s": measured,
        "measured_fraction": measured / wall if wall > 0 else None,
        "invocations": [*(i.model_dump(exclude_unset=True) for i in history), now.model_dump()],
        "counts": {s: sum(r.status == s for r in results) for s in CellCounts.model_fields},
        "superseded": [a.model_dump() for a in superseded],
    })
