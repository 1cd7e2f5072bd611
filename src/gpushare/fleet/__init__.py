"""Running a matrix on more than one GPU: one whole GPU per scenario, side by side.

A scenario owns its GPU's sharing state (its MPS daemon, its caps, its servers), so the unit
of scheduling is a scenario on a whole GPU. Executors differ only in where the scenario runs:
`local_gpus` starts a worker process per GPU of this machine, `ray_cluster` places a Ray actor
per scenario on a GPU anywhere in a cluster. Each is a registered executor (experiment.matrix's
EXECUTORS) in a module of this package; `matrix` imports every module here, so a new executor
is its file. Either way the driver's `MatrixBook` keeps the
single matrix.json, fed by the typed events (`CellStarted`, `CellFinished`, `ServersTimed`)
that the workers send back (as JSON lines: matrix_events' one encoding); this module turns
plans into JSON and back for them.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..config import parse_config
from ..interrupts import Interrupts
from ..experiment.matrix_plan import PlannedCell, ScenarioPlan, Todo


def cell_doc(cell: PlannedCell) -> dict[str, Any]:
    return {"name": cell.name, "load_kind": cell.load_kind, "load": cell.load, "repeat": cell.repeat,
            "config": cell.config.model_dump(mode="json"), "label": cell.label}


def cell_from_doc(doc: dict[str, Any]) -> PlannedCell:
    return PlannedCell(doc["name"], doc["load_kind"], doc["load"], doc["repeat"], parse_config(doc["config"]),
                       doc.get("label"))


def plan_doc(plan: ScenarioPlan) -> dict[str, Any]:
    """A scenario's plan as JSON, for a worker in another process (a search's cells follow one by one)."""
    return {"config": plan.config.model_dump(mode="json"), "cells": [cell_doc(c) for c in plan.cells]}


def plan_from_doc(doc: dict[str, Any]) -> ScenarioPlan:
    return ScenarioPlan(parse_config(doc["config"]), [cell_from_doc(c) for c in doc["cells"]])


SERVER_START_S = 60.0
"""What one vLLM start costs, for ordering only: 60-67 s for a 7B shape on an H200 with a warm
compile cache (results/h200/fleet, 2026-11-30); servers of a scenario start one after another."""


def longest_first(work: list[tuple[ScenarioPlan, Todo]]) -> list[tuple[ScenarioPlan, Todo]]:
    """The longest scenarios first: whole-GPU jobs of unequal length finish soonest when the
    longest start first (list scheduling, longest processing time first). A scenario's length
    is its servers' start-ups plus its cells' time bounds; cells bounded by a request count
    are ranked by their number. Ties keep --configs' order."""
    def length(item: tuple[ScenarioPlan, Todo]) -> tuple[float, int]:
        plan, todo = item
        starts = SERVER_START_S * sum(s.launched for s in plan.config.servers)
        cells = todo.known if plan.search is None else []  # a search's length is not known ahead
        return starts + sum(c.config.load.duration_s or 0.0 for c in cells), len(cells)

    return sorted(work, key=length, reverse=True)


def wait_for(threads: list[threading.Thread], interrupts: Interrupts, on_signal: Callable[[str], None]) -> None:
    """Start the threads that run scenarios side by side and wait for them. The matrix runs
    deferred (signals are recorded, never raised), so each signal received meanwhile is
    handed to `on_signal`, once, by name."""
    for thread in threads:
        thread.start()
    seen = interrupts.mark()
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.1)
        for name in interrupts.received[seen:]:
            seen += 1
            on_signal(name)
