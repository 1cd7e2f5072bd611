"""One run: resolve, start servers, drive load, write the run folder, stop everything.

The folder is written whatever happens; `summary.json` says `"complete": false` (and why)
for a run cut short, and keeps the requests it finished.
"""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import environment, mig, mps
from .config import ScenarioConfig, dump_config
from .engines import ENGINES, LaunchPlan, redact, redact_env
from .errors import ConfigError, GpushareError, RunFailure
from .loadgen import Endpoint, LoadGenerator, LoadResult
from .metrics import RunSummary, e2el, gpu_window, measurement_window, queue_time, summarize, tpot, ttft
from .models import ResolvedModel, cache_root, resolve_model
from .monitor import GpuMonitor
from .mps import MpsDaemon
from .records import RequestRecord
from .servers import ServerFleet, ensure_port_free
from .sharing import Placement, place_servers
from .workload import RequestSource, inter_arrival_gaps, load_label, load_tokenizer, random_streams

INTERRUPTED_EXIT = 130

REQUEST_COLUMNS = [
    "index", "warmup", "endpoint", "tenant", "status", "error", "scheduled", "sent", "first_token", "end",
    "ttft_s", "tpot_s", "e2el_s", "queue_s", "input_tokens", "output_tokens", "usage_reported", "chunks",
]


@dataclass
class RunOutcome:
    run_dir: Path
    summary: dict[str, Any]
    exit_code: int


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived outside the load phase."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def make_run_dir(root: Path, config: ScenarioConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}_{config.scenario}_{load_label(config.load)}"
    for attempt in range(100):
        path = root / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
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
    for device in gpu["devices"]:
        if device["index"] == index:
            return device["memory_mib"] / 1024
    raise ConfigError(f"sharing.gpu: there is no GPU {index} (found {len(gpu['devices'])})")


def preflight(config: ScenarioConfig, say: Any) -> Prepared:
    """Everything that can be checked before a folder or a process exists."""
    for i, server in enumerate(config.servers):
        ENGINES[server.engine].check_installed(server)
        if server.engine != "external":
            ensure_port_free(server.host, server.port, f"servers[{i}].port")
    gpu = environment.gpus()
    mig_list = mig.discover(config.sharing.gpu) if config.sharing.mode == "mig" else None
    placements = place_servers(config, gpu_memory_gib(gpu, config.sharing.gpu), mig_list)
    if config.sharing.uses_mps:
        mps.preflight(config.sharing.mps_pipe_directory)
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


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_requests(path: Path, records: list[RequestRecord]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUEST_COLUMNS)
        for r in records:
            w.writerow([
                r.index, int(r.warmup), r.endpoint, r.tenant or "", r.status, r.error,
                _num(r.scheduled), _num(r.sent), _num(r.first_token), _num(r.end),
                _num(ttft(r)), _num(tpot(r)), _num(e2el(r)), _num(queue_time(r)),
                "" if r.input_tokens is None else r.input_tokens,
                "" if r.output_tokens is None else r.output_tokens,
                int(r.usage_reported), len(r.chunk_times),
            ])


def write_chunks(path: Path, records: list[RequestRecord]) -> None:
    """Every token-carrying network block: request index, arrival time, tokens in it."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "t", "tokens"])
        for r in records:
            for t, n in zip(r.chunk_times, r.chunk_tokens):
                w.writerow([r.index, f"{t:.6f}", n])


def summary_document(config: ScenarioConfig, records: list[RequestRecord], result: LoadResult | None,
                     fleet: ServerFleet | None, complete: bool, error: str | None) -> dict[str, Any]:
    overall = summarize(records, config.slo)
    measured = [r for r in records if not r.warmup]
    doc: dict[str, Any] = {
        "scenario": config.scenario,
        "complete": complete,
        "error": error,
        "sharing_mode": config.sharing.mode,
        "load_mode": "open_loop" if config.load.open_loop else "closed_loop",
        "max_concurrency": config.load.concurrency,
        "request_rate": config.load.request_rate,
        "burstiness": config.load.burstiness,
        "num_prompts": len(measured),
        "warmup_requests": sum(r.warmup for r in records),
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
    for name in sorted({r.endpoint for r in records}):
        by_endpoint[name] = summarize([r for r in records if r.endpoint == name], config.slo)
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


def print_summary(console: Console, doc: dict[str, Any], run_dir: Path) -> None:
    def ms(key: str) -> str:
        v = doc.get(key)
        return "-" if v is None else f"{v:,.1f}"

    table = Table(title=f"{doc['scenario']} ({'complete' if doc['complete'] else 'INCOMPLETE'})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("requests completed / failed", f"{doc['completed']} / {doc['failed']}")
    table.add_row("duration (s)", f"{doc['duration']:.2f}")
    table.add_row("request throughput (req/s)", f"{doc['request_throughput']:.2f}")
    table.add_row("output throughput (tok/s)", f"{doc['output_throughput']:,.1f}")
    table.add_row("total token throughput (tok/s)", f"{doc['total_token_throughput']:,.1f}")
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E latency")):
        table.add_row(f"{label} mean / p50 / p99 (ms)", f"{ms(f'mean_{name}_ms')} / {ms(f'p50_{name}_ms')} / {ms(f'p99_{name}_ms')}")
    gpu = doc.get("gpu") or {}
    if gpu.get("energy_j") is not None:
        table.add_row("GPU energy (J) / per output token (J)", f"{gpu['energy_j']:,.0f} / {gpu['energy_per_output_token_j']:.3f}")
        table.add_row("GPU power avg / max (W)", f"{gpu['avg_power_w']:.0f} / {gpu['max_power_w'] or 0:.0f}")
    if "request_goodput" in doc:
        table.add_row("goodput (req/s) / good fraction", f"{doc['request_goodput']:.2f} / {doc['good_request_fraction'] or 0:.2%}")
    if doc["completed"] or doc["failed"]:
        console.print(table)
    state = "" if doc["complete"] else " (incomplete)"
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

    def __call__(self, rec: RequestRecord) -> None:
        if rec.warmup or not self.enabled:
            return
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
    """Ends the load once a server has died: polled, and checked after every failed request
    (a dead server fails requests faster than any poll)."""

    def __init__(self, fleet: ServerFleet):
        self.fleet = fleet
        self.generator: LoadGenerator | None = None

    def death(self) -> str | None:
        dead = self.fleet.first_dead()
        if dead is None:
            return None
        return f"server {dead.name} exited with code {dead.exit_code()} during the run{dead.log_hint()}"

    def check(self) -> bool:
        reason = self.death()
        if reason and self.generator is not None:
            self.generator.abort(reason)
        return reason is not None

    def on_record(self, rec: RequestRecord) -> None:
        if not rec.ok:
            self.check()


async def drive(generator: LoadGenerator, watch: ServerWatch, poll_s: float = 0.5) -> LoadResult:
    """Run the load while watching the servers and the signals; both end it early, cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, generator.abort, f"interrupted by {sig.name}")
    watch.generator = generator

    async def poll() -> None:
        while not watch.check():
            await asyncio.sleep(poll_s)

    poller = asyncio.ensure_future(poll())
    try:
        result = await generator.run()
    finally:
        poller.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if not result.aborted:
        result.aborted = watch.death() or ""
    return result


def _event_loop_runner() -> Any:
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


@dataclass
class _State:
    servers: "ScenarioServers | None" = None
    generator: LoadGenerator | None = None
    result: LoadResult | None = None
    error: str | None = None
    exit_code: int = 0
    counters_before: dict[str, dict[str, float] | None] | None = None
    counters_after: dict[str, dict[str, float] | None] | None = None

    def measure_start(self) -> None:
        assert self.servers is not None and self.servers.fleet is not None
        self.counters_before = self.servers.fleet.counters()

    def counter_deltas(self) -> dict[str, dict[str, float] | None]:
        """What each server counted itself during the measured window (None: no counters)."""
        before, after = self.counters_before or {}, self.counters_after or {}
        out: dict[str, dict[str, float] | None] = {}
        for name, end in after.items():
            start = before.get(name)
            out[name] = None if end is None or start is None else {k: end[k] - start[k] for k in end if k in start}
        return out


class ScenarioServers:
    """A scenario's servers (and their MPS daemon), started once and stopped together; one
    run, or every cell of a matrix, measures with them. The MPS daemon is entered first so
    that it is quit only after every client server has stopped."""

    def __init__(self, config: ScenarioConfig, prepared: Prepared, log_dir: Path, console: Console):
        self.config = config
        self.plans = prepared.plans
        self.log_dir = log_dir
        self.console = console
        self.fleet: ServerFleet | None = None
        self.mps: dict[str, Any] | None = None
        self._stack = ExitStack()

    def _say(self, message: str) -> None:
        self.console.print(message, soft_wrap=True, highlight=False, markup=False)

    def __enter__(self) -> "ScenarioServers":
        try:
            if self.config.sharing.uses_mps:
                daemon = self._stack.enter_context(
                    MpsDaemon(self.log_dir, self.config.sharing.mps_pipe_directory, say=self._say))
                self.mps = {"pipe_directory": str(daemon.pipe_directory),
                            "started_by_gpushare": daemon.process is not None,
                            "control_pid": daemon.process.pid if daemon.process else None}
                self.plans = [replace(p, env={**p.env, **daemon.client_env}) if p.argv is not None else p
                              for p in self.plans]
            self.fleet = self._stack.enter_context(ServerFleet(self.plans, self.log_dir))
            with self.console.status("starting servers") as status:
                self.fleet.start(
                    on_ready=lambda h: self._say(f"server {h.name} ready at {h.plan.base_url} in {h.startup_s:.1f} s"),
                    progress=lambda h, s: status.update(f"starting server {h.name}: waiting {s:.0f} s"),
                )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def run_scenario(config: ScenarioConfig, console: Console | None = None, servers: ScenarioServers | None = None,
                 run_dir: Path | None = None, prepared: Prepared | None = None) -> RunOutcome:
    """One measurement. Alone it starts and stops its own servers; a matrix passes servers
    that are already running (with what its preflight resolved) and a folder for the cell."""
    console = console or Console(stderr=True)

    def say(message: str) -> None:
        console.print(message, soft_wrap=True, highlight=False, markup=False)

    prepared = prepared or preflight(config, say)
    models, plans = prepared.models, (servers.plans if servers else prepared.plans)
    tokenizer = load_tokenizer(config.tokenizer or models[0].path)
    prompt_rng, arrival_rng = random_streams(config.seed)
    source = RequestSource(config.workload, config.api, tokenizer, prompt_rng)
    load = config.load
    endpoints = [
        Endpoint(plan.name, plan.base_url, models[i].served_name, config.servers[i].tenant)
        for i, plan in enumerate(plans)
    ]

    if run_dir is None:
        run_dir = make_run_dir(config.out, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    env = environment.collect()
    env["servers"] = [
        {"name": p.name, "base_url": p.base_url, "argv": None if p.argv is None else redact(p.argv),
         "env": redact_env(p.env)}
        for p in plans
    ]
    (run_dir / "env.json").write_text(json.dumps(env, indent=2, default=str))
    say(f"Run folder: {run_dir}")

    state = _State()
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ExitStack() as stack:
            stack.enter_context(GpuMonitor(run_dir / "gpu.csv", config.monitor_interval_s, say=say))
            started_here = servers is None
            servers = state.servers = servers or ScenarioServers(config, prepared, run_dir, console)
            if started_here:  # a matrix's servers stay up after the cell
                stack.enter_context(servers)
            fleet = servers.fleet
            assert fleet is not None
            progress = stack.enter_context(LiveProgress(console, load.n_requests))
            watch = ServerWatch(fleet)
            if watch.check():  # a matrix cell whose server died in an earlier cell
                raise RunFailure(watch.death() or "a server is not running")

            def on_record(rec: RequestRecord) -> None:
                progress(rec)
                watch.on_record(rec)

            state.generator = LoadGenerator(
                endpoints, config.api, load, source,
                arrivals=inter_arrival_gaps(arrival_rng, load.request_rate, load.burstiness) if load.open_loop else None,
                count_tokens=lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
                on_record=on_record,
                before_measure=state.measure_start,
            )
            state.result = _event_loop_runner()(drive(state.generator, watch))
            state.counters_after = fleet.counters()
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, _raise_interrupted)
            if state.result.aborted:
                state.error = state.result.aborted
                state.exit_code = INTERRUPTED_EXIT if state.error.startswith("interrupted") else 1
    except (Interrupted, KeyboardInterrupt) as err:
        state.error, state.exit_code = f"interrupted by {err or 'SIGINT'}", INTERRUPTED_EXIT
    except GpushareError as err:
        state.error, state.exit_code = str(err), err.exit_code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        records = state.generator.records if state.generator else []
        write_requests(run_dir / "requests.csv", records)
        write_chunks(run_dir / "chunks.csv", records)
        complete = state.error is None
        fleet = state.servers.fleet if state.servers else None
        doc = summary_document(config, records, state.result, fleet, complete, state.error)
        doc["server_counters"] = state.counter_deltas()
        doc["placements"] = {plan.name: p.describe() for plan, p in zip(plans, prepared.placements)}
        doc["mps"] = state.servers.mps if state.servers else None
        doc["gpu"] = gpu_summary(run_dir / "gpu.csv", records, doc["total_output_tokens"], fleet)
        if complete and doc["completed"] == 0:
            state.exit_code = 1
            doc["error"] = "no request completed"
        (run_dir / "summary.json").write_text(json.dumps(doc, indent=2, allow_nan=False))
        print_summary(console, doc, run_dir)
    return RunOutcome(run_dir, doc, state.exit_code)
