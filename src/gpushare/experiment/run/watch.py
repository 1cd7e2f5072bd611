"""The watch over the servers while the load runs: whether each one lived through the window,
and what each counted itself."""

from __future__ import annotations

import time
from typing import Any

from ...core.events import Event, PhaseChanged, RequestFinished
from ...core.processes import snapshot, still_running
from ...core.records import RequestRecord
from ...serving.servers import ServerFleet

LEADER_EXIT_WAIT_S = 10.0
"""How long a leader seen gone from its group may take to hand over its exit code: it shows
as a zombie once its main thread ends, but the kernel reaps it only after all its threads."""


class ServerWatch:
    """Whether every server lived through the window: its process, and every process of its
    group alive when the window opened (vLLM's engine core can die while its API server
    lives on, failing requests). Ends the load once one has died: polled, and checked after
    every failed request (a dead server fails requests faster than any poll)."""

    def __init__(self, fleet: ServerFleet):
        self.fleet = fleet
        self.stop_load: Any = None
        self._members: dict[str, dict[int, int | None]] = {}
        self._waited: set[str] = set()

    def death(self) -> str | None:
        """Why the first dead server is dead. The group is read before the exit codes, and a
        leader seen gone from it is waited for, so a leader's death is always told as its
        exit, never as a lost member."""
        lost = {}
        for handle in self.fleet.handles:
            taken = self._members.get(handle.name, {})
            running = still_running(taken)
            lost[handle.name] = [pid for pid in taken if pid not in running]
            leader = None if handle.process is None else handle.process.pid
            if leader in lost[handle.name] and handle.name not in self._waited:
                self._waited.add(handle.name)  # once: a leader that never hands over is told as lost
                handle.wait_exit(LEADER_EXIT_WAIT_S)
        dead = self.fleet.first_dead()
        if dead is not None:
            return f"server {dead.name} exited with code {dead.exit_code()} during the run{dead.log_hint()}"
        for handle in self.fleet.handles:
            if lost[handle.name]:
                return (f"server {handle.name} lost process {', '.join(map(str, lost[handle.name]))} of its group"
                        f" during the run{handle.log_hint()}")
        return None

    def check(self) -> bool:
        reason = self.death()
        if reason and self.stop_load is not None:
            self.stop_load(reason)
        return reason is not None

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhaseChanged) and event.phase == "measure":
            self._members = {h.name: snapshot(h.group()) for h in self.fleet.handles}
        elif isinstance(event, RequestFinished) and not event.record.ok:
            self.check()

    def settle(self, records: list[RequestRecord], wait_s: float = 1.0) -> str | None:
        """After a load that ended on its own: a server whose death failed the last requests
        may not be reaped yet. Where measured requests failed, give it `wait_s` to show."""
        deadline = time.monotonic() + (wait_s if any(not r.ok for r in records if not r.warmup) else 0.0)
        while True:
            reason = self.death()
            if reason or time.monotonic() >= deadline:
                return reason
            time.sleep(0.05)


class CounterWindow:
    """The servers' own counters at the window's start and end (None: a server has none)."""

    def __init__(self, fleet: ServerFleet):
        self.fleet = fleet
        self.before: dict[str, dict[str, float] | None] = {}
        self.after: dict[str, dict[str, float] | None] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhaseChanged) and event.phase == "measure":
            self.before = self.fleet.counters()

    def close(self) -> None:
        self.after = self.fleet.counters()

    def deltas(self) -> dict[str, dict[str, float] | None]:
        """What each server counted itself during the measured window."""
        out: dict[str, dict[str, float] | None] = {}
        for name, end in self.after.items():
            start = self.before.get(name)
            out[name] = None if end is None or start is None else {k: end[k] - start[k] for k in end if k in start}
        return out
