"""Server processes: start from a `LaunchPlan`, wait until ready, always stop.

Each launched server runs in its own process group (its engine workers included), with its
output in the run folder. Stopping sends SIGTERM to the group, then SIGKILL after a grace
period, and is safe to call any number of times.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from ..core.processes import end_with_parent, group_members, signal_group
from ..errors import ConfigError, RunFailure
from . import leftovers
from .engines import LaunchPlan
from .server_env import server_environment

KILL_WAIT_S = 60.0  # SIGKILL cannot be caught; a wait past a few seconds is the kernel's (a loaded machine)
STARTING_GRACE_S = 5.0  # a server stopped before it was ready has no request to finish


def ensure_port_free(host: str, port: int, key: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose last connections linger in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            left = leftovers.holding(host, port)
            by = "" if left is None else (
                f" by a server an earlier gpushare run left behind (pid {left.pgid}, run folder {left.folder});"
                " stop it with: gpushare doctor --clean")
            raise ConfigError(f"{key}: port {port} on {host} is already in use{by}") from None


def free_port(host: str, taken: set[int]) -> int:
    """A port the OS says is free on `host` now, not in `taken`: for a server whose config
    names none, so that scenarios running side by side never race for one fixed port."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def scrape_metrics(base_url: str, names: dict[str, str], timeout: float = 5.0) -> dict[str, float] | None:
    """Prometheus metrics at base_url/metrics, summed over labels, under our names (server's
    name -> ours); only those the server exposes. None if it does not answer."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=timeout) as resp:
            text = resp.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    totals: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            try:
                value = float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            totals[names[name]] = totals.get(names[name], 0.0) + value
    return totals


def scrape_counters(plan: LaunchPlan, timeout: float = 5.0) -> dict[str, float] | None:
    """The server's own counters (summed over labels), or None if it has none (its plan names
    none, or its /metrics exposes none of them: an external server of another kind) or does
    not answer."""
    if not plan.counters:
        return None
    return scrape_metrics(plan.base_url, {metric: ours for ours, metric in plan.counters.items()}, timeout) or None


def requests_held(plan: LaunchPlan) -> float | None:
    """How many requests the server is running or queueing, by its own gauges; None if unknown."""
    if not plan.queue_gauges:
        return None
    found = scrape_metrics(plan.base_url, {g: g for g in plan.queue_gauges}, timeout=2.0)
    return sum(found.values()) if found and len(found) == len(plan.queue_gauges) else None


class ServerHandle:
    """One server: launched by us (a process group we own) or external (nothing to stop)."""

    def __init__(self, plan: LaunchPlan, log_path: Path | None):
        self.plan = plan
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        if self.plan.argv is None or self.process is not None:
            return
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.plan.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=server_environment(self.plan),
                    start_new_session=True,
                    preexec_fn=end_with_parent,
                )
            except OSError as err:
                raise RunFailure(f"server {self.name}: cannot start {self.plan.argv[0]}: {err.strerror}") from None
        url = urllib.parse.urlsplit(self.plan.base_url)
        leftovers.record("server", self.process.pid, self.name, self.plan.argv, self.log_path.parent,
                         host=url.hostname, port=url.port, stop_grace_s=self.plan.stop_grace_s)

    def group(self) -> list[int]:
        """Live processes of the server's process group (none for an external server)."""
        return group_members(self.process.pid) if self.process is not None else []

    def exit_code(self) -> int | None:
        """The launched process's exit code, or None while it runs (or for external servers)."""
        return None if self.process is None else self.process.poll()

    def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code of a leader seen gone from its group: the kernel hands it over only
        once every thread of the leader has ended, which takes a while on a loaded machine."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def wait_ready(self, poll_s: float = 0.5, progress: Callable[[float], None] | None = None) -> float:
        """Block until the ready URL answers 200; return the seconds it took."""
        began = time.monotonic()
        deadline = began + self.plan.ready_timeout_s
        url = self.plan.base_url + self.plan.ready_path
        while True:
            code = self.exit_code()
            if code is not None:
                raise RunFailure(f"server {self.name} exited with code {code} before it was ready{self.log_hint()}")
            if answers(url):
                self.startup_s = time.monotonic() - began
                return self.startup_s
            now = time.monotonic()
            if now >= deadline:
                raise RunFailure(
                    f"server {self.name} was not ready at {url} after {self.plan.ready_timeout_s:g} s{self.log_hint()}"
                )
            if progress:
                progress(now - began)
            time.sleep(poll_s)

    def log_tail(self, lines: int = 12) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def kv_cache_tokens(self) -> int | None:
        """The KV-cache size the engine reported in its log (vLLM prints it once at start-up)."""
        if self.plan.kv_cache_pattern is None or self.log_path is None or not self.log_path.exists():
            return None
        found = re.findall(self.plan.kv_cache_pattern, self.log_path.read_text(errors="replace"))
        return int(found[-1].replace(",", "")) if found else None

    def log_hint(self) -> str:
        tail = self.log_tail(6)
        if not tail:
            return ""
        return f"; last log lines ({self.log_path}): " + " | ".join(line.strip()[:200] for line in tail)

    def stop(self, grace_s: float | None = None, hurry: Callable[[], bool] = lambda: False) -> list[int]:
        """SIGTERM the whole process group, SIGKILL what is left after `grace_s` (at once when
        `hurry()` turns true: a second Ctrl-C). One deadline covers the leader and the engine
        workers, which can outlive it in the group its id still names. Returns the members
        still alive KILL_WAIT_S after SIGKILL (a process stuck in the kernel): none, as a rule."""
        if self.process is None:
            return []
        if grace_s is None:
            grace_s = self.plan.stop_grace_s if self.startup_s is not None else STARTING_GRACE_S
        pgid = self.process.pid  # start_new_session makes the server its group's leader
        signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while group_members(pgid) and time.monotonic() < deadline and not hurry():
            self.process.poll()
            time.sleep(0.1)
        if group_members(pgid):
            signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + KILL_WAIT_S
            while group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        leftovers.forget(pgid)  # kept while any member lives: `gpushare doctor` lists it
        return group_members(pgid)


class ServerFleet:
    """The run's servers: started one after another, each once the previous answers (two
    engines profiling GPU memory at once disturb each other), and stopped in reverse."""

    def __init__(self, plans: list[LaunchPlan], log_dir: Path):
        self.handles = [
            ServerHandle(plan, log_dir / f"server-{i}.log" if plan.argv is not None else None)
            for i, plan in enumerate(plans)
        ]

    def start(self, on_ready: Callable[[ServerHandle], None] | None = None,
              progress: Callable[[ServerHandle, float], None] | None = None) -> None:
        for handle in self.handles:
            handle.start()
            handle.wait_ready(progress=(lambda s, h=handle: progress(h, s)) if progress else None)
            if on_ready:
                on_ready(handle)

    def counters(self) -> dict[str, dict[str, float] | None]:
        return {h.name: scrape_counters(h.plan) for h in self.handles}

    def wait_idle(self, limit_s: float, poll_s: float = 0.1) -> None:
        """Until every server says it holds no request, or limit_s for one that cannot say."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            held = [requests_held(h.plan) for h in self.handles]
            if all(n == 0 for n in held):
                return
            time.sleep(poll_s if all(n is not None for n in held) else max(0.0, deadline - time.monotonic()))

    def first_dead(self) -> ServerHandle | None:
        return next((h for h in self.handles if h.exit_code() is not None), None)

    def stop(self, hurry: Callable[[], bool] = lambda: False) -> dict[str, list[int]]:
        """Every server stopped, last first; the members each one left alive (see `ServerHandle.stop`)."""
        left = {handle.name: handle.stop(hurry=hurry) for handle in reversed(self.handles)}
        return {name: pids for name, pids in left.items() if pids}

    def __enter__(self) -> "ServerFleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
