"""`matrix --gpus`: the scenarios of a matrix side by side on this machine's GPUs, one per GPU.

Each GPU takes the next scenario (longest first) and runs it in a worker process of its own
(`gpushare.fleet.worker`), so that each load has its own event loop, collector and signal
handling and nothing of one scenario's run is shared with another's. Workers are started in
sessions of their own: the driver is the only process the terminal signals, and it forwards
each signal it gets to every worker, which then stops as a one-GPU matrix does. A worker
also gets SIGTERM if the driver dies outright. Worker consoles go to OUT/fleet-logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, Iterator

from rich.console import Console

from .. import environment
from ..core.files import FLEET_LOGS
from ..core.processes import end_with_parent
from ..errors import ConfigError
from ..experiment.matrix import EXECUTORS, Executor
from ..experiment.matrix_book import MatrixBook, ScenarioReport
from ..experiment.matrix_plan import ScenarioPlan, Todo
from ..experiment.matrix_events import CellFinished, MatrixEvent, decode_event
from ..experiment.run.console import say
from ..interrupts import Interrupts
from . import cell_doc, longest_first, plan_doc, wait_for

FORWARDED = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGTERM}


def parse_gpus(value: str, available: int | None, unchecked: bool = False) -> list[int]:
    """`--gpus 0,1` or `--gpus all` (every GPU NVML lists; `available`, None without NVML).
    Indices NVML cannot check are refused unless `unchecked` (--unchecked-gpus) says to run on
    them as given. One line naming the flag otherwise."""
    if value.strip() == "all":
        if not available:
            raise ConfigError("--gpus: 'all' needs NVML to list the GPUs, and it lists none here; name them: --gpus 0,1")
        return list(range(available))
    try:
        gpus = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--gpus: give GPU indices separated by commas (e.g. 0,1) or 'all', not {value!r}") from None
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus: give distinct GPU indices (0 or more) separated by commas, or 'all', not {value!r}")
    if not available and not unchecked:
        listed = "NVML is not available here" if available is None else "NVML lists no GPU here"
        raise ConfigError(f"--gpus: {listed}, so GPU {value} cannot be checked; run where NVML lists the GPUs, "
                          "or add --unchecked-gpus to run on these indices unchecked")
    if available and max(gpus) >= available:
        raise ConfigError(f"--gpus: there is no GPU {max(gpus)} (NVML lists {available})")
    return gpus


@EXECUTORS.register("gpus")
class LocalGpusExecutor(Executor):
    flag = "--gpus"
    where = "this machine"

    def __init__(self, gpus: list[int], console: Console, interrupts: Interrupts):
        self.gpus = gpus
        self.console = console
        self.interrupts = interrupts
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--gpus", default=None)
        parser.add_argument("--unchecked-gpus", action="store_true")

    @classmethod
    def check_flags(cls, flags: argparse.Namespace) -> None:
        if flags.unchecked_gpus and flags.gpus is None:
            raise ConfigError("--unchecked-gpus: only with --gpus")

    @classmethod
    def from_flags(cls, flags: argparse.Namespace, console: Console, interrupts: Interrupts) -> "LocalGpusExecutor":
        return cls(parse_gpus(flags.gpus, environment.gpus().count(), flags.unchecked_gpus), console, interrupts)

    def run(self, work: list[tuple[ScenarioPlan, Todo]], book: MatrixBook) -> None:
        jobs: queue.Queue[tuple[ScenarioPlan, Todo]] = queue.Queue()
        for item in longest_first(work):
            jobs.put(item)
        logs = book.out / FLEET_LOGS
        logs.mkdir(exist_ok=True)
        threads = [threading.Thread(target=self._gpu_loop, args=(gpu, jobs, book, logs), daemon=True)
                   for gpu in self.gpus]

        def forward(name: str) -> None:
            book.stop()
            self._forward(FORWARDED.get(name, signal.SIGTERM))

        wait_for(threads, self.interrupts, forward)

    def _forward(self, signum: int) -> None:
        with self._lock:
            for process in self._workers.values():
                if process.poll() is None:
                    os.kill(process.pid, signum)

    def _gpu_loop(self, gpu: int, jobs: "queue.Queue[tuple[ScenarioPlan, Todo]]", book: MatrixBook,
                  logs: Path) -> None:
        while True:
            try:
                plan, todo = jobs.get_nowait()
            except queue.Empty:
                return
            if book.stopped:
                ScenarioReport(plan.config.scenario, todo, book.publish).rest("not_run", "the matrix was interrupted")
                continue
            self._run_worker(gpu, plan, todo, book, logs / f"gpu{gpu}-{plan.config.scenario}.log")

    def _run_worker(self, gpu: int, plan: ScenarioPlan, todo: Todo, book: MatrixBook, log_path: Path) -> None:
        name = plan.config.scenario
        initial = list(todo.known)
        job = {"plan": plan_doc(plan), "cells": [cell_doc(c) for c in initial], "more": todo.grows,
               "root": str(book.out.resolve()), "gpu": gpu, "where": f"GPU {gpu}"}
        found = " and those its search finds" if todo.grows else ""
        say(self.console, f"GPU {gpu}: scenario {name} ({len(initial)} cell(s){found}); its console: {log_path}")
        report = ScenarioReport(name, todo, book.publish)
        with open(log_path, "ab") as log:
            with self._lock:
                if book.stopped:
                    process = None
                else:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "gpushare.fleet.worker"], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                        preexec_fn=end_with_parent)
                    self._workers[gpu] = process
            if process is not None:
                assert process.stdin is not None and process.stdout is not None
                events = (decode_event(line) for line in process.stdout)
                if _send(process.stdin, job, last=not todo.grows) and todo.grows:
                    self._hand_out(process.stdin, todo, {c.name for c in initial}, events, report, book)
                for event in events:
                    report(event)
                code = process.wait()
                with self._lock:
                    self._workers.pop(gpu, None)
        if report.left():  # a worker that died (or was never started) reports nothing more
            if process is None or book.stopped:
                report.rest("not_run", "the matrix was interrupted")
            else:
                reason = f"lost its worker on GPU {gpu}: it exited with code {code}; see {log_path}"
                say(self.console, f"scenario {name} {reason}")
                report.lost(reason, report.under_way())

    @staticmethod
    def _hand_out(stdin: IO[bytes], todo: Todo, sent: set[str], events: Iterator[MatrixEvent],
                  report: ScenarioReport, book: MatrixBook) -> None:
        """A search's cells, each sent once the one before it has ended (its outcome decides
        the next); then the worker's stdin closes, which ends its scenario."""
        for cell in todo:
            if cell.name not in sent and (book.stopped or not _send(stdin, cell_doc(cell))):
                break
            for event in events:
                report(event)
                if isinstance(event, CellFinished) and event.entry.cell == cell.name:
                    break
            else:
                break  # the worker has ended
        _send(stdin, None, last=True)


def _send(stdin: IO[bytes], doc: dict[str, Any] | None, last: bool = False) -> bool:
    """One JSON line to a worker (None: nothing), then its stdin closed if `last`; False if it
    has died (its log says why)."""
    try:
        if doc is not None:
            stdin.write(json.dumps(doc).encode() + b"\n")
            stdin.flush()
        if last:
            stdin.close()
        return True
    except BrokenPipeError:
        return False
