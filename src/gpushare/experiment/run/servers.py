"""A scenario's servers (and their MPS daemon), started once and stopped together."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from ...config import ScenarioConfig
from ...interrupts import Interrupts
from ...serving.mps import MpsDaemon
from ...serving.servers import ServerFleet
from .console import say
from .preflight import Prepared, gpu_uuid


class ScenarioServers:
    """A scenario's servers (and their MPS daemon), started once and stopped together; one
    run, or every cell of a matrix, measures with them. The MPS daemon is entered first so
    that it is quit only after every client server has stopped. Stopping is never cut short
    by a signal: another one only makes it kill at once."""

    def __init__(self, config: ScenarioConfig, prepared: Prepared, log_dir: Path, console: Console,
                 interrupts: Interrupts | None = None):
        self.config = config
        self.plans = prepared.plans
        self.gpu_info = prepared.gpu
        self.log_dir = log_dir
        self.console = console
        self.interrupts = interrupts or Interrupts()
        self.fleet: ServerFleet | None = None
        self.mps: dict[str, Any] | None = None
        self._stack = ExitStack()

    def _say(self, message: str) -> None:
        say(self.console, message)

    def __enter__(self) -> "ScenarioServers":
        try:
            if self.config.sharing.uses_mps:
                gpu = self.config.sharing.gpu
                daemon = self._stack.enter_context(
                    MpsDaemon(self.log_dir, gpu, self.config.sharing.mps_pipe_directory, say=self._say,
                              gpu_uuid=gpu_uuid(self.gpu_info, gpu)))
                self.mps = {"pipe_directory": str(daemon.pipe_directory),
                            "started_by_gpushare": daemon.process is not None,
                            "control_pid": daemon.process.pid if daemon.process else None, "gpu": gpu}
                self.plans = [replace(p, env=mps_client_env(p.env, daemon)) if p.argv is not None else p
                              for p in self.plans]
            self.fleet = fleet = ServerFleet(self.plans, self.log_dir)
            self._stack.callback(self._stop_fleet, fleet)
            with self.interrupts.interruptible(), self.console.status("starting servers") as status:
                fleet.start(
                    on_ready=lambda h: self._say(f"server {h.name} ready at {h.plan.base_url} in {h.startup_s:.1f} s"),
                    progress=lambda h, s: status.update(f"starting server {h.name}: waiting {s:.0f} s"),
                )
        except BaseException:
            self.close()
            raise
        return self

    def _stop_fleet(self, fleet: ServerFleet) -> None:
        hurry = self.interrupts.hurry(self.interrupts.mark())  # before the message that invites the signal
        if any(h.process is not None for h in fleet.handles):
            self._say("stopping servers (SIGTERM, then SIGKILL after a grace period; Ctrl-C again to kill at once)")
        for name, pids in fleet.stop(hurry=hurry).items():
            self._say(f"server {name}: process {', '.join(map(str, pids))} of its group still alive after SIGKILL;"
                      " `gpushare doctor --clean` ends it once it can")

    def close(self) -> None:
        with self.interrupts.deferred():
            self._stack.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def mps_client_env(env: dict[str, str], daemon: MpsDaemon) -> dict[str, str]:
    """A server's environment under the scenario's MPS daemon. A client counts devices among
    those its daemon sees, and ours sees the run's GPU only: the server names device 0 (on an
    H200 host, a client of a daemon on GPU 1 that named 1, or none, found no usable GPU). A
    daemon someone else runs is used as it is, with the GPU the placement chose."""
    if daemon.process is None:
        return {**env, **daemon.client_env}
    return {**env, "CUDA_VISIBLE_DEVICES": "0", **daemon.client_env}
