"""Experiment matrices: every scenario at every load level (and repeat), each cell its own run
folder, with a scenario's servers started once and reused by all its cells.

A vLLM start costs more than most cells, so restarting servers per cell would spend most of
the matrix outside measurement windows. The matrix is resumable: a cell whose folder holds a
complete run measured under the settings planned now is skipped, an incomplete one is redone
(its folder kept beside it as an earlier attempt); a complete cell measured under other
settings is refused unless asked to be redone. A failed cell is recorded and the matrix goes on.

The plan (cells and their settings) is experiment.matrix_plan's and the record of what ran
experiment.matrix_book's; here are the executors that run a plan and a scenario's session.
"""

from __future__ import annotations

import argparse
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, ClassVar

from rich.console import Console

from ..config import ScenarioConfig
from ..core.files import TRACEBACK
from ..errors import ConfigError, GpushareError
from ..interrupts import Interrupted, Interrupts
from ..load.workload import load_tokenizer
from ..measure.results import MatrixIndex
from ..registry import Registry
from .matrix_book import MatrixBook, ScenarioReport, cell_entry
from .matrix_events import CellFinished, CellStarted, MatrixEvent, ServersTimed
from .matrix_plan import PlannedCell, ScenarioPlan, Todo, plan_matrix
from .run.console import say
from .run.preflight import Prepared, preflight
from .run.run import INTERRUPTED_EXIT, run_scenario
from .run.servers import ScenarioServers


DRAIN_S = 2.0  # at most, between cells: until every server says it holds no request


def _preload_tokenizer(path: str) -> None:
    try:
        load_tokenizer(path)
    except GpushareError:
        pass  # the first cell loads it again and reports the error there


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
