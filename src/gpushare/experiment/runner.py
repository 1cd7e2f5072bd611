"""One run: resolve, start servers, drive load, write the run folder, stop everything.

The folder is written whatever happens; `summary.json` says `"complete": false` (and why)
for a run cut short, and keeps the requests it finished.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import math
import os
import resource
import socket
import time
import traceback
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import environment
from ..config import ScenarioConfig, Tenant, dump_config, step_clock
from ..errors import ConfigError, GpushareError, RunFailure
from ..core.events import Event, PhaseChanged, Publisher, RequestFinished
from ..core.files import CONFIG, ENV, GPU_SAMPLES, TRACEBACK
from ..core.processes import process_alive
from ..interrupts import Interrupted, Interrupts
from ..load.loadgen import Endpoint, LoadGenerator, LoadGroup, LoadResult
from ..core.records import RequestRecord
from ..load.request_log import RequestLog
from ..load.sharegpt import with_max_model_len
from ..load.workload import RequestSource, inter_arrival_gaps, load_label, load_tokenizer, random_streams
from ..measure.metrics import RunSummary, gpu_window, is_good, measurement_window, summarize
from ..measure.monitor import GpuMonitor
from ..measure.results import Summary, gpu_device, location_of, write_summary, write_unfinished
from ..serving import mig, mps
from ..serving.engines import ENGINES, LaunchPlan, redact, redact_env
from ..serving.models import ResolvedModel, cache_root, resolve_model
from ..serving.mps import MpsDaemon
from ..serving.servers import ServerFleet, ensure_port_free, free_port
from ..serving.sharing import Placement, place_servers

INTERRUPTED_EXIT = 130


@dataclass
class RunOutcome:
    run_dir: Path
    summary: Summary
    exit_code: int


MAX_RUN_LABEL = 100
"""Characters of a run folder's name after its time stamp: far below the file systems' 255
bytes, so that a time stamp and an attempt suffix always fit."""


def run_label(config: ScenarioConfig) -> str:
    """The scenario and each tenant's load (chat-r4+batch-c2). One longer than MAX_RUN_LABEL
    (forty tenants) is cut and ends in a hash of the whole, so that names stay distinct; the
    run's config.yaml and summary keep every tenant."""
    loads = [f"{t.name}-{load_label(t.load)}" if t.name else load_label(t.load) for t in config.resolved_tenants()]
    label = f"{config.scenario}_{'+'.join(loads)}"
    if len(label) <= MAX_RUN_LABEL:
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:10]
    return f"{label[:MAX_RUN_LABEL - len(digest) - 1]}-{digest}"


def make_run_dir(root: Path, config: ScenarioConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}_{run_label(config)}"
    for attempt in range(100):
        path = root / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise ConfigError(f"--out: cannot create a run folder under {root}: {err.strerror}") from None
    raise RunFailure(f"cannot create a run folder under {root}")


@dataclass
class Prepared:
    """What preflight resolved: models, where each server runs, and how to launch it."""

    models: dict[int, ResolvedModel]
    placements: list[Placement]
    plans: list[LaunchPlan]
    gpu: dict[str, Any]


def gpu_memory_gib(gpu: dict[str, Any], index: int) -> float | None:
    """The GPU's memory by NVML, or None on a machine without NVML or GPUs."""
    if not gpu.get("nvml") or not gpu["devices"]:
        return None
    device = gpu_device(gpu, index)
    if device is None:
        raise ConfigError(f"sharing.gpu: there is no GPU {index} (found {len(gpu['devices'])})")
    return device["memory_mib"] / 1024


def gpu_uuid(gpu: dict[str, Any], index: int) -> str | None:
    return (gpu_device(gpu, index) or {}).get("uuid")


def with_ports(config: ScenarioConfig) -> ScenarioConfig:
    """The scenario with a free port for every launched server whose config names none."""
    taken = {s.port for s in config.servers if s.port is not None}
    servers = []
    for server in config.servers:
        if server.engine != "external" and server.port is None:
            port = free_port(server.host, taken)
            taken.add(port)
            server = server.model_copy(update={"port": port})
        servers.append(server)
    return config.model_copy(update={"servers": servers})


FILES_BESIDE_THE_LOAD = 32
"""Files a run holds open beside its requests' sockets and its servers' files (its CSV files,
the event loop's, the tokenizer's), with room to spare: a run at concurrency 1 holds 19."""
FILES_PER_SERVER = 4
"""A server's log, its pipes, and the socket of its readiness checks."""


def in_flight_bound(config: ScenarioConfig) -> int | None:
    """The most requests the load keeps in flight at once, its tenants' together; None for an
    open loop without a concurrency cap, which has no bound."""
    caps = [None if t.load.concurrency is None else min(t.load.concurrency, t.load.n_requests or t.load.concurrency)
            for t in config.resolved_tenants()]
    return None if None in caps else sum(caps)  # type: ignore[arg-type]


def ensure_open_files(configs: Sequence[ScenarioConfig]) -> None:
    """Each request in flight holds a socket: raise this process's soft open-file limit
    (RLIMIT_NOFILE, which the servers it starts inherit) to what the largest of these loads
    needs, up to the hard limit, or refuse before anything starts, rather than fail requests
    with "Too many open files". Without a bound the soft limit is raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = math.inf if hard == resource.RLIM_INFINITY else hard
    bounds = [in_flight_bound(config) for config in configs]
    if None in bounds:
        if soft != resource.RLIM_INFINITY and soft < ceiling:
            with suppress(ValueError, OSError):  # an infinite hard limit may be above the kernel's
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return
    concurrency = max(bounds, default=0)
    servers = max((len(config.servers) for config in configs), default=0)
    need = len(os.listdir("/proc/self/fd")) + FILES_BESIDE_THE_LOAD + FILES_PER_SERVER * servers + concurrency
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    if need <= ceiling:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            return
    limits = f"soft {soft}, hard {'unlimited' if ceiling == math.inf else hard}"
    raise ConfigError(
        f"load.concurrency: {concurrency} requests in flight need about {need} open files, above the open-file "
        f"limit (RLIMIT_NOFILE: {limits}); raise the hard limit (ulimit -Hn {need} as root, or LimitNOFILE / "
        f"limits.conf) or lower the concurrency")


def preflight(config: ScenarioConfig, say: Any, cells: Iterable[ScenarioConfig] = ()) -> Prepared:
    """Everything that can be checked before a folder or a process exists; `cells` are a
    matrix's cells, whose loads the check of open files covers too. Servers without a port get
    one here; the launch plans carry it."""
    ensure_open_files([config, *cells])
    config = with_ports(config)
    for i, server in enumerate(config.servers):
        ENGINES[server.engine].check_installed(server)
        if server.engine != "external":
            assert server.port is not None
            ensure_port_free(server.host, server.port, f"servers[{i}].port")
    gpu = environment.gpus()
    mig_list = mig.discover(config.sharing.gpu) if config.sharing.mode == "mig" else None
    profiles = mig.gpu_profiles(config.sharing.gpu) if any(s.mig_profile for s in config.servers) else None
    placements = place_servers(config, gpu_memory_gib(gpu, config.sharing.gpu), mig_list, profiles)
    if config.sharing.uses_mps:
        index = config.sharing.gpu
        mps.preflight(config.sharing.mps_pipe_directory, mps.gpu_names(index, gpu_uuid(gpu, index)))
    # The embedded model is prepared for external servers too: its folder holds the tokenizer.
    models = {
        i: resolve_model(server.model or config.model, config.served_model_name, say=say)
        for i, server in enumerate(config.servers)
    }
    names, cache = config.server_names(), cache_root()
    plans = [
        ENGINES[p.server.engine].plan(names[i], p.server, models[i].path, models[i].served_name, cache)
        for i, p in enumerate(placements)
    ]
    return Prepared(models, placements, plans, gpu)


# --- output files ---------------------------------------------------------------------------


def summary_document(config: ScenarioConfig, records: list[RequestRecord], result: LoadResult | None,
                     fleet: ServerFleet | None, complete: bool, error: str | None) -> dict[str, Any]:
    measured = [r for r in records if r.measured]
    overall = summarize(measured, config.slo)
    if config.tenants:  # each request judged by its own tenant's SLO
        slos = {t.name: t.slo for t in config.resolved_tenants()}
        if any(slos.values()):  # a tenant without an SLO has no objective to miss
            overall = replace(overall, good_requests=sum(is_good(r, slos[r.tenant]) for r in measured))
    doc: dict[str, Any] = {
        "scenario": config.scenario,
        "complete": complete,
        "error": error,
        "sharing_mode": config.sharing.mode,
        **(config.load.summary_fields() if not config.tenants else
           {"load_mode": "tenants", "max_concurrency": None, "request_rate": None, "burstiness": None}),
        "num_prompts": len(measured),
        "warmup_requests": sum(r.warmup for r in records),
        "out_of_window": sum(not r.warmup and not r.in_window for r in records),
        "endpoint_type": config.api.endpoint,
        "stream": config.api.stream,
        "slo_s": dict(config.slo),
    }
    doc.update(overall.flat())
    doc["token_counting"] = (
        "server usage" if overall.usage_missing == 0
        else f"tokenizer for {overall.usage_missing} request(s) without server usage"
    )
    if result is not None:
        n = max(1, len(measured))
        doc["client_cpu_s"] = result.client_cpu_s
        doc["client_cpu_ms_per_request"] = 1000.0 * result.client_cpu_s / n
        doc["requests_built_in_window"] = result.built_in_window
    if fleet is not None:
        doc["servers"] = [
            {"name": h.name, "base_url": h.plan.base_url, "pid": h.pid, "startup_s": h.startup_s,
             "kv_cache_tokens": h.kv_cache_tokens(), "exit_code": h.exit_code()}
            for h in fleet.handles
        ]
    by_endpoint: dict[str, RunSummary] = {}
    for name in sorted({r.endpoint for r in measured}):
        by_endpoint[name] = summarize([r for r in measured if r.endpoint == name], config.slo)
    doc["per_endpoint"] = {name: s.flat() for name, s in by_endpoint.items()}
    return doc


def gpu_summary(path: Path, records: list[RequestRecord], output_tokens: int,
                fleet: ServerFleet | None) -> dict[str, Any] | None:
    """GPU statistics over the measurement window (warm-up excluded), from gpu.csv."""
    window = measurement_window(r for r in records if not r.warmup)
    if window is None or not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    groups = {h.name: h.pid for h in fleet.handles} if fleet else {}
    return gpu_window(rows, window[0], window[1], output_tokens, groups)


def ms_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def print_summary(console: Console, summary: Summary, run_dir: Path) -> None:
    table = Table(title=f"{summary.scenario} ({'complete' if summary.complete else 'INCOMPLETE'})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("requests completed / failed", f"{summary.completed} / {summary.failed}")
    table.add_row("duration (s)", f"{summary.duration:.2f}")
    table.add_row("request throughput (req/s)", f"{summary.request_throughput:.2f}")
    table.add_row("output throughput (tok/s)", f"{summary.output_throughput:,.1f}")
    table.add_row("total token throughput (tok/s)", f"{summary.total_token_throughput:,.1f}")
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E latency")):
        stats = summary.pick(f"{stat}_{name}_ms" for stat in ("mean", "p50", "p99")).values()
        table.add_row(f"{label} mean / p50 / p99 (ms)", " / ".join(map(ms_or_dash, stats)))
    gpu = summary.gpu
    if gpu is not None and gpu.energy_j is not None:
        table.add_row("GPU energy (J) / per output token (J)",
                      f"{gpu.energy_j:,.0f} / {gpu.energy_per_output_token_j:.3f}")
        table.add_row("GPU power avg / max (W)", f"{gpu.avg_power_w:.0f} / {gpu.max_power_w or 0:.0f}")
    if summary.request_goodput is not None:  # only with SLOs
        table.add_row("goodput (req/s) / good fraction",
                      f"{summary.request_goodput:.2f} / {summary.good_request_fraction or 0:.2%}")
    for name, block in (summary.tenants or {}).items():
        met = block.good_request_fraction
        table.add_row(f"tenant {name}: done / failed / tok/s / TTFT p99 (ms) / SLO met",
                      f"{block.completed} / {block.failed} / {block.output_throughput:,.1f} / "
                      f"{ms_or_dash(block.p99_ttft_ms)} / {'-' if met is None else f'{met:.0%}'}")
    if summary.completed or summary.failed:
        console.print(table)
    state = "" if summary.complete else " (incomplete)"
    console.print(f"Run folder: {run_dir}{state}", soft_wrap=True, highlight=False)


# --- the run ----------------------------------------------------------------------------------


class LiveProgress:
    """Requests done / failed and output tokens/s, on a terminal only."""

    def __init__(self, console: Console, total: int | None):
        self.enabled = console.is_terminal
        self.tokens = 0
        self.failed = 0
        self.began: float | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(), console=console, transient=True,
        )
        self.task = self.progress.add_task("requests", total=total, failed=0, rate="0")

    def __call__(self, event: Event) -> None:
        if not self.enabled or not isinstance(event, RequestFinished) or event.record.warmup:
            return
        rec = event.record
        self.began = self.began or rec.sent
        self.tokens += rec.output_tokens or 0
        self.failed += not rec.ok
        elapsed = max(1e-9, time.perf_counter() - self.began)
        self.progress.update(self.task, advance=1, failed=self.failed, rate=f"{self.tokens / elapsed:,.0f}")

    def __enter__(self) -> "LiveProgress":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()


class ServerWatch:
    """Whether every server lived through the window: its process, and every process of its
    group alive when the window opened (vLLM's engine core can die while its API server
    lives on, failing requests). Ends the load once one has died: polled, and checked after
    every failed request (a dead server fails requests faster than any poll)."""

    def __init__(self, fleet: ServerFleet):
        self.fleet = fleet
        self.stop_load: Any = None
        self._members: dict[str, list[int]] = {}

    def death(self) -> str | None:
        dead = self.fleet.first_dead()
        if dead is not None:
            return f"server {dead.name} exited with code {dead.exit_code()} during the run{dead.log_hint()}"
        for handle in self.fleet.handles:
            lost = [pid for pid in self._members.get(handle.name, []) if not process_alive(pid)]
            if lost:
                return (f"server {handle.name} lost process {', '.join(map(str, lost))} of its group during the run"
                        f"{handle.log_hint()}")
        return None

    def check(self) -> bool:
        reason = self.death()
        if reason and self.stop_load is not None:
            self.stop_load(reason)
        return reason is not None

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhaseChanged) and event.phase == "measure":
            self._members = {h.name: h.group() for h in self.fleet.handles}
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


async def drive(generator: LoadGroup | LoadGenerator, watch: ServerWatch, interrupts: Interrupts, log: RequestLog,
                poll_s: float = 0.5) -> LoadResult:
    """Run the load while watching the servers and the signals; both end it early, cleanly.
    The poll also flushes the request log, so rows reach the disk within a second."""
    watch.stop_load = generator.abort

    async def poll() -> None:
        while not watch.check():
            log.flush_if_due()
            await asyncio.sleep(poll_s)

    with interrupts.stopping_load(generator.abort):
        poller = asyncio.ensure_future(poll())
        try:
            return await generator.run()
        finally:
            poller.cancel()


def _event_loop_runner() -> Any:
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


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


def run_verdict(error: str | None, planned: int | None, records: list[RequestRecord]) -> tuple[bool, str | None]:
    """A run is complete only when nothing went wrong, every planned request ran, and at
    least one completed. Failed requests are counted, not a reason to call a run incomplete."""
    if error:
        return False, error
    measured = [r for r in records if not r.warmup]
    if planned is not None and len(measured) < planned:
        return False, f"only {len(measured)} of {planned} planned requests ran"
    if not any(r.ok for r in measured):
        return False, "no request completed"
    return True, None


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
        fleet.stop(hurry=hurry)

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


def say(console: Console, message: str) -> None:
    """One plain line; a terminal that has gone (SIGHUP) must not stop the clean-up."""
    try:
        console.print(message, soft_wrap=True, highlight=False, markup=False)
    except OSError:
        pass


def run_scenario(config: ScenarioConfig, console: Console | None = None, servers: ScenarioServers | None = None,
                 run_dir: Path | None = None, prepared: Prepared | None = None,
                 interrupts: Interrupts | None = None) -> RunOutcome:
    """One measurement. Alone it starts and stops its own servers; a matrix passes servers
    that are already running (with what its preflight resolved) and a folder for the cell.

    Whatever ends the run (the load, a signal, a dead server, any exception), the folder
    gets every request that finished and one verdict: `complete`, `error` and the exit code
    agree."""
    console = console or Console(stderr=True)
    interrupts = interrupts or Interrupts()
    prepared = prepared or preflight(config, lambda m: say(console, m))
    plans = servers.plans if servers else prepared.plans
    loads = [TenantLoad.build(config, tenant, prepared.models, plans) for tenant in config.resolved_tenants()]

    with interrupts.deferred():  # from here on the folder is written, whatever arrives
        run_dir = open_run_dir(config, run_dir, plans)
        say(console, f"Run folder: {run_dir}")
        return _measure(config, console, servers, run_dir, prepared, interrupts, loads)


@dataclass
class TenantLoad:
    """One tenant's requests and where they go, built before the run folder exists (a bad
    workload is an error before anything starts)."""

    tenant: Tenant
    endpoints: list[Endpoint]
    source: RequestSource
    tokenizer: Any
    arrival_rng: Any

    @classmethod
    def build(cls, config: ScenarioConfig, tenant: Tenant, models: dict[int, ResolvedModel],
              plans: list[LaunchPlan]) -> "TenantLoad":
        first = tenant.servers[0]
        tokenizer = load_tokenizer(config.tokenizer or models[first].path)
        prompt_rng, arrival_rng = random_streams(tenant.seed)
        workload = with_max_model_len(tenant.workload, [config.servers[i] for i in tenant.servers],
                                      [models[i].path for i in tenant.servers])
        endpoints = [Endpoint(plans[i].name, plans[i].base_url, models[i].served_name, config.servers[i].tenant)
                     for i in tenant.servers]
        return cls(tenant, endpoints, RequestSource(workload, tenant.api, tokenizer, prompt_rng), tokenizer,
                   arrival_rng)

    def generator(self, publish: Publisher) -> LoadGenerator:
        load = self.tenant.load
        if load.open_loop:
            # A step schedule scales gaps drawn at rate 1 by each step's rate.
            rate = 1.0 if load.steps is not None else load.request_rate
            arrivals = inter_arrival_gaps(self.arrival_rng, rate, load.burstiness)
        return LoadGenerator(
            self.endpoints, self.tenant.api, load, self.source,
            arrivals=arrivals if load.open_loop else None,
            count_tokens=lambda text: len(self.tokenizer.encode(text, add_special_tokens=False)),
            publish=publish, tenant=self.tenant.name,
        )


def open_run_dir(config: ScenarioConfig, run_dir: Path | None, plans: list[LaunchPlan]) -> Path:
    """The run folder with what is known before anything starts; its summary says "not
    complete" until the run has ended."""
    if run_dir is None:
        run_dir = make_run_dir(config.out, config)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_unfinished(run_dir, config.scenario)
        (run_dir / CONFIG).write_text(dump_config(config))
        env = environment.collect()
        env["servers"] = [
            {"name": p.name, "base_url": p.base_url, "argv": None if p.argv is None else redact(p.argv),
             "env": redact_env(p.env)}
            for p in plans
        ]
        (run_dir / ENV).write_text(json.dumps(env, indent=2, default=str))
    except OSError as err:
        raise ConfigError(f"--out: cannot write the run folder {run_dir}: {err.strerror or err}") from None
    return run_dir


def _measure(config: ScenarioConfig, console: Console, servers: ScenarioServers | None, run_dir: Path,
             prepared: Prepared, interrupts: Interrupts, loads: list[TenantLoad]) -> RunOutcome:
    error: str | None = None
    exit_code = 0
    result: LoadResult | None = None
    group: LoadGroup | None = None
    counters: CounterWindow | None = None
    scenario_servers = servers
    with ExitStack() as stack:
        log = stack.enter_context(RequestLog(run_dir))
        mark = interrupts.mark()
        try:
            with interrupts.interruptible():
                stack.enter_context(GpuMonitor(run_dir / GPU_SAMPLES, config.monitor_interval_s,
                                               say=lambda m: say(console, m), gpus=[config.sharing.gpu]))
                if scenario_servers is None:  # a matrix's servers stay up after the cell
                    scenario_servers = ScenarioServers(config, prepared, run_dir, console, interrupts)
                    stack.enter_context(scenario_servers)
                fleet = scenario_servers.fleet
                assert fleet is not None
                watch = ServerWatch(fleet)
                if watch.check():  # a matrix cell whose server died in an earlier cell
                    raise RunFailure(watch.death() or "a server is not running")
                counters = CounterWindow(fleet)
                planned = [load.tenant.load.n_requests for load in loads]
                progress = stack.enter_context(
                    LiveProgress(console, None if None in planned else sum(p or 0 for p in planned)))
                publish = Publisher([log, watch, counters, progress])
                group = LoadGroup([load.generator(publish) for load in loads], publish)
                result = _event_loop_runner()(drive(group, watch, interrupts, log))
                counters.close()
                error = result.aborted or watch.settle(result.records)
                if error:
                    exit_code = INTERRUPTED_EXIT if error.startswith("interrupted") else 1
        except Interrupted as err:
            error, exit_code = f"interrupted by {err}", INTERRUPTED_EXIT
        except GpushareError as err:
            error, exit_code = str(err), err.exit_code
        except Exception as err:  # a defect or an unforeseen fault: recorded, never a complete run
            (run_dir / TRACEBACK).write_text(traceback.format_exc())
            if signal_name := interrupts.signal_since(mark):
                error, exit_code = f"interrupted by {signal_name}", INTERRUPTED_EXIT
            else:
                error, exit_code = f"{type(err).__name__}: {err}", 1
        # Leaving the stack stops what this run started (servers, monitor) and closes the log.
    records = group.records if group else []
    complete, error = tenants_verdict(error, [load.tenant for load in loads], records)
    if not complete and exit_code == 0:
        exit_code = 1
    fleet = scenario_servers.fleet if scenario_servers else None
    doc = summary_document(config, records, result, fleet, complete, error)
    if config.tenants:
        doc["tenants"] = tenant_blocks(loads, records)
    doc["server_counters"] = counters.deltas() if counters else {}
    doc["placements"] = {plan.name: p.describe() for plan, p in zip(prepared.plans, prepared.placements)}
    doc["mps"] = scenario_servers.mps if scenario_servers else None
    doc["location"] = location_of(prepared.gpu, socket.gethostname(), config.sharing.gpu).model_dump()
    if not config.tenants:
        doc["workload"] = loads[0].source.describe()
    doc["gpu"] = gpu_summary(run_dir / GPU_SAMPLES, [r for r in records if r.in_window], doc["total_output_tokens"],
                             fleet)
    summary = write_summary(run_dir, doc)
    try:
        print_summary(console, summary, run_dir)
    except OSError:
        pass
    return RunOutcome(run_dir, summary, exit_code)


def tenants_verdict(error: str | None, tenants: list[Tenant], records: list[RequestRecord]) -> tuple[bool, str | None]:
    """The run's verdict: `run_verdict` for each tenant on its own requests. It fails closed:
    an error is the verdict whatever the tenants did, and a run without a tenant measured
    nothing, so it is never complete."""
    if error:
        return False, error
    if not tenants:
        return False, "no tenant sent load"
    for tenant in tenants:
        mine = records if len(tenants) == 1 else [r for r in records if r.tenant == tenant.name]
        complete, reason = run_verdict(None, tenant.load.n_requests, mine)
        if not complete:
            return False, reason if tenant.name is None else f"tenant {tenant.name}: {reason}"
    return True, None


def tenant_blocks(loads: list[TenantLoad], records: list[RequestRecord]) -> dict[str, Any]:
    """summary.json's block per tenant: the top level's metric keys over the tenant's requests
    in the common window, its load and workload, and, under a step schedule, the same keys
    per step of the aggressor's schedule."""
    steps = step_clock(load.tenant.load for load in loads)
    aggressor = next((load.tenant.name for load in loads if load.tenant.load.steps is steps), None)
    blocks: dict[str, Any] = {}
    for load in loads:
        tenant = load.tenant
        assert tenant.name is not None
        mine = [r for r in records if r.tenant == tenant.name and r.in_window]
        block: dict[str, Any] = {
            **tenant.load.summary_fields(),
            "servers": [e.name for e in load.endpoints],
            "load": tenant.load.model_dump(mode="json"),
            "slo_s": dict(tenant.slo),
            "seed": tenant.seed,
            "workload": load.source.describe(),
            "warmup_requests": sum(r.tenant == tenant.name and r.warmup for r in records),
            "out_of_window": sum(r.tenant == tenant.name and not r.warmup and not r.in_window for r in records),
        }
        block.update(summarize(mine, tenant.slo).flat())
        if steps is not None:
            block["by_step"] = {
                "tenant": aggressor, "step_s": steps.step_s, "kind": steps.kind,
                "steps": [{"step": i, "level": level,
                           **summarize([r for r in mine if r.step == i], tenant.slo).flat()}
                          for i, level in enumerate(steps.levels)],
            }
        blocks[tenant.name] = block
    return blocks
