"""The driver's record of a matrix: which cells are still to run, which are reused or set
aside as earlier attempts, and matrix.json, written at every finished cell. Executors reach it
only through typed events (experiment.matrix_events), wherever their cells run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from rich.console import Console

from ..errors import ConfigError
from ..measure.results import (CellCounts, CellEntry, Invocation, Location, MatrixIndex, SupersededAttempt, Verdict,
                               read_matrix_index, read_run_config, read_verdict, write_matrix_index, write_superseded)
from .matrix_events import CellFinished, CellStarted, MatrixEvent
from .matrix_plan import PlannedCell, ScenarioPlan, Todo, config_hash
from .run.console import say
from .run.run import INTERRUPTED_EXIT


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
