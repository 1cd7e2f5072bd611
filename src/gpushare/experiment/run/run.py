"""One run: resolve, start servers, drive load, write the run folder, stop everything.

The folder is written whatever happens; `summary.json` says `"complete": false` (and why)
for a run cut short, and keeps the requests it finished.
"""

from __future__ import annotations

import asyncio
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ...config import ScenarioConfig
from ...core.events import Publisher
from ...core.files import GPU_SAMPLES, TRACEBACK
from ...errors import GpushareError, RunFailure
from ...interrupts import Interrupted, Interrupts
from ...load.loadgen import LoadGenerator, LoadGroup, LoadResult
from ...load.request_log import RequestLog
from ...measure.monitor import GpuMonitor
from ...measure.results import Summary, write_summary
from .console import LiveProgress, print_summary, say
from .folder import open_run_dir
from .preflight import Prepared, preflight
from .servers import ScenarioServers
from .summary import RunEnd, run_summary
from .tenants import TenantLoad, tenant_loads
from .verdict import tenants_verdict
from .watch import CounterWindow, ServerWatch

INTERRUPTED_EXIT = 130


@dataclass
class RunOutcome:
    run_dir: Path
    summary: Summary
    exit_code: int


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
    loads = tenant_loads(config, prepared.models, plans)

    with interrupts.deferred():  # from here on the folder is written, whatever arrives
        run_dir = open_run_dir(config, [load.tenant for load in loads], run_dir, plans)
        say(console, f"Run folder: {run_dir}")
        return _measure(config, console, servers, run_dir, prepared, interrupts, loads)


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
    end = RunEnd(records, result, scenario_servers.fleet if scenario_servers else None,
                 scenario_servers.mps if scenario_servers else None, counters, complete, error)
    summary = run_summary(config, prepared, loads, end, run_dir / GPU_SAMPLES)
    write_summary(run_dir, summary)
    try:
        print_summary(console, summary, run_dir)
    except OSError:
        pass
    return RunOutcome(run_dir, summary, exit_code)


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
