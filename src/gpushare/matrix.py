"""Experiment matrices: every scenario at every load level (and repeat), each cell its own run
folder, with a scenario's servers started once and reused by all its cells.

A vLLM start costs more than most cells, so restarting servers per cell would spend most of
the matrix outside measurement windows. The matrix is resumable: a cell whose folder holds a
complete run is skipped, an incomplete one is redone; a failed cell is recorded and the
matrix goes on.
"""

from __future__ import annotations

import shutil
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from .config import ScenarioConfig, apply_overrides, parse_config, read_config_file
from .errors import ConfigError, GpushareError
from .interrupts import Interrupted, Interrupts
from .results import CellCounts, CellEntry, Invocation, MatrixIndex, read_matrix_index, read_verdict, write_matrix_index
from .runner import INTERRUPTED_EXIT, ScenarioServers, preflight, run_scenario, say
from .workload import load_tokenizer

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


@dataclass(frozen=True)
class ScenarioPlan:
    """A scenario whose servers start once and serve every one of its cells, in order."""

    config: ScenarioConfig
    cells: list[PlannedCell]


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
               wall_s: float = 0.0, measured_s: float = 0.0) -> CellEntry:
    """A planned cell's entry in matrix.json."""
    return CellEntry(scenario=scenario, cell=cell.name, load_kind=cell.load_kind, load=cell.load, repeat=cell.repeat,
                     run_dir=str(folder), status=status, error=error, wall_s=wall_s, measured_s=measured_s)


def previous_index(out: Path) -> tuple[dict[tuple[str, str], CellEntry], list[Invocation]]:
    """An earlier invocation's cells (by scenario and cell) and invocation records."""
    index = read_matrix_index(out)
    if index is None:
        return {}, []
    return {(c.scenario, c.cell): c for c in index.cells}, index.invocations


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


def run_matrix(configs: list[ScenarioConfig], concurrency: list[int], rates: list[float], repeats: int,
               out: Path, n_requests: int | None = None, console: Console | None = None,
               per_concurrency: int | None = None, duration_s: float | None = None,
               interrupts: Interrupts | None = None) -> tuple[MatrixIndex, int]:
    """Run every cell; returns the matrix index (also written to out/matrix.json) and an exit code."""
    plan = plan_matrix(configs, concurrency, rates, repeats, out, n_requests, per_concurrency, duration_s)
    return run_plan(plan, out, console, interrupts)


def run_plan(plan: list[ScenarioPlan], out: Path, console: Console | None = None,
             interrupts: Interrupts | None = None) -> tuple[MatrixIndex, int]:
    """The local executor: one scenario after another on this machine, each cell its own run
    folder under out/SCENARIO/CELL, indexed in out/matrix.json, resumable. A signal stops it
    after the cell it interrupts (or at once between cells); the cells it did not reach are
    indexed as not run."""
    console = console or Console(stderr=True)
    interrupts = interrupts or Interrupts()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-check").touch()
        (out / ".write-check").unlink()
    except OSError as err:
        raise ConfigError(f"--out: cannot write to {out}: {err.strerror or err}") from None
    with interrupts.deferred():  # signals act only at the checkpoints below, never mid-bookkeeping
        return _run_cells(plan, out, console, interrupts)


def _run_cells(plan: list[ScenarioPlan], out: Path, console: Console,
               interrupts: Interrupts) -> tuple[MatrixIndex, int]:
    total = sum(len(scenario.cells) for scenario in plan)
    earlier, history = previous_index(out)
    planned = {(scenario.config.scenario, cell.name) for scenario in plan for cell in scenario.cells}
    # Cells of earlier invocations that this one does not plan (other configs or levels) stay indexed.
    results = [kept_cell(out, c) for key, c in earlier.items() if key not in planned]
    indexed = total + len(results)
    now = Invocation()
    began = time.monotonic()
    done_cells, cells_run, cell_time, exit_code, stop = 0, 0, 0.0, 0, False

    def record(result: CellEntry) -> None:
        results.append(result)
        write_index(out, results, history, now, began, indexed)

    def record_rest(scenario: str, cells: list[PlannedCell], status: str, error: str) -> None:
        """Cells of a scenario that got no result of their own."""
        done = {(r.scenario, r.cell) for r in results}
        for cell in cells:
            if (scenario, cell.name) not in done:
                record(cell_entry(scenario, cell, out / scenario / cell.name, status, error))

    for scenario_plan in plan:
        config = scenario_plan.config
        scenario_dir = out / config.scenario
        todo = []
        for cell in scenario_plan.cells:
            folder = scenario_dir / cell.name
            if read_verdict(folder).complete:
                before = earlier.get((config.scenario, cell.name))
                record(cell_entry(config.scenario, cell, folder, "skipped", wall_s=before.wall_s if before else 0.0,
                                  measured_s=before.measured_s if before else 0.0))
                done_cells += 1
            else:
                todo.append(cell)
        if not todo:
            continue
        if stop:
            record_rest(config.scenario, todo, "not_run", "the matrix was interrupted")
            continue
        scenario_dir.mkdir(parents=True, exist_ok=True)
        mark = interrupts.mark()
        try:
            interrupts.checkpoint()  # a signal that came during the last scenario's clean-up
            prepared = preflight(config, lambda m: say(console, m))
            # The tokenizer loads (seconds, the first time in a process) while the servers start.
            tokenizer = threading.Thread(target=_preload_tokenizer, daemon=True,
                                         args=(config.tokenizer or prepared.models[0].path,))
            tokenizer.start()
            t_start = time.monotonic()
            with ScenarioServers(config, prepared, scenario_dir, console, interrupts) as servers:
                now.server_start_s += time.monotonic() - t_start
                tokenizer.join()
                assert servers.fleet is not None
                for position, cell in enumerate(todo):
                    if stop:
                        record_rest(config.scenario, todo, "not_run", "the matrix was interrupted")
                        break
                    interrupts.checkpoint()  # a signal that came while the last cell was ending
                    folder = scenario_dir / cell.name
                    eta = "" if not cells_run else f", ETA {(total - done_cells) * cell_time / cells_run:.0f} s"
                    what = cell.name if cell.load is None else f"{cell.load_kind} {cell.load:g} repeat {cell.repeat}"
                    console.print(f"[{done_cells + 1}/{total}] {config.scenario} {what}{eta}", markup=False,
                                  highlight=False)
                    shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt
                    t0 = time.monotonic()
                    outcome = run_scenario(cell.config, console, servers, folder, prepared, interrupts)
                    wall = time.monotonic() - t0
                    cell_time += wall
                    cells_run += 1
                    done_cells += 1
                    now.cells_run += 1
                    verdict = outcome.summary.verdict
                    complete = verdict.complete and outcome.exit_code == 0
                    record(cell_entry(config.scenario, cell, folder, "complete" if complete else "failed",
                                      verdict.error, wall, outcome.summary.duration if complete else 0.0))
                    if outcome.exit_code == INTERRUPTED_EXIT:
                        stop, exit_code = True, INTERRUPTED_EXIT
                    elif not complete:
                        exit_code = exit_code or 1
                    if position + 1 < len(todo):
                        with interrupts.interruptible():
                            servers.fleet.wait_idle(DRAIN_S)  # the cell's last requests leave the servers
                t_stop = time.monotonic()
            now.server_stop_s += time.monotonic() - t_stop
        except Interrupted:
            stop, exit_code = True, INTERRUPTED_EXIT
            record_rest(config.scenario, todo, "not_run", "the matrix was interrupted")
        except Exception as err:  # this scenario failed (a defect included): record it, go on
            if not isinstance(err, GpushareError):
                (scenario_dir / "traceback.txt").write_text(traceback.format_exc())
            if interrupts.signal_since(mark):  # an Interrupted that came out wrapped
                stop, exit_code = True, INTERRUPTED_EXIT
                record_rest(config.scenario, todo, "not_run", "the matrix was interrupted")
                continue
            reason = str(err) if isinstance(err, GpushareError) else f"{type(err).__name__}: {err}"
            exit_code = exit_code or 1
            say(console, f"scenario {config.scenario} failed: {reason}")
            record_rest(config.scenario, todo, "failed", reason)
    index = write_index(out, results, history, now, began, indexed)
    return index, exit_code


def write_index(out: Path, results: list[CellEntry], history: list[Invocation], now: Invocation,
                began: float, total: int) -> MatrixIndex:
    """matrix.json: every cell, and the matrix's wall time over all its invocations with the
    share inside measurement windows (cells measured in earlier invocations count there).
    Earlier invocations are written as they were recorded."""
    now.wall_s = time.monotonic() - began
    now.measured_s = sum(r.measured_s for r in results if r.status == "complete")
    wall = sum(i.wall_s for i in [*history, now])
    measured = sum(r.measured_s for r in results)
    return write_matrix_index(out, {
        "cells": [r.model_dump() for r in results],
        "planned_cells": total,
        "wall_s": wall,
        "measured_s": measured,
        "measured_fraction": measured / wall if wall > 0 else None,
        "invocations": [*(i.model_dump(exclude_unset=True) for i in history), now.model_dump()],
        "counts": {s: sum(r.status == s for r in results) for s in CellCounts.model_fields},
    })
