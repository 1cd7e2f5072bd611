"""summary.json assembled from what a run ended with, as one typed `Summary`: each block is
built as its model (servers, tenants, location, the GPU window) and the whole is typed once."""

from __future__ import annotations

import csv
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...config import ScenarioConfig, step_clock
from ...core.records import RequestRecord
from ...load.loadgen import LoadResult
from ...measure.metric_catalog import flat
from ...measure.metrics import gpu_window, is_good, measurement_window, summarize
from ...measure.results import ByStep, GpuWindow, MetricBlock, ServerEntry, StepBlock, Summary, TenantBlock, location_of
from ...measure.summary import RunSummary
from ...serving.servers import ServerFleet
from .preflight import Prepared
from .tenants import TenantLoad
from .watch import CounterWindow


@dataclass
class RunEnd:
    """What a run ended with: its requests, how the load and the servers fared, and its verdict."""

    records: list[RequestRecord]
    result: LoadResult | None
    fleet: ServerFleet | None
    mps: dict[str, Any] | None
    counters: CounterWindow | None
    complete: bool
    error: str | None


def run_summary(config: ScenarioConfig, prepared: Prepared, loads: list[TenantLoad], end: RunEnd,
                gpu_csv: Path) -> Summary:
    records = end.records
    measured = [r for r in records if r.measured]
    overall = overall_metrics(config, loads, measured)
    load = loads[0].tenant.load if not config.tenants else None
    return Summary(
        scenario=config.scenario,
        complete=end.complete,
        error=end.error,
        sharing_mode=config.sharing.mode,
        **(load.summary_fields() if load is not None else
           {"load_mode": "tenants", "max_concurrency": None, "request_rate": None, "burstiness": None}),
        num_prompts=len(measured),
        warmup_requests=sum(r.warmup for r in records),
        out_of_window=sum(not r.warmup and not r.in_window for r in records),
        endpoint_type=config.api.endpoint,
        stream=config.api.stream,
        slo_s=config.slo_bounds,
        **flat(overall),
        token_counting=("server usage" if overall.usage_missing == 0
                        else f"tokenizer for {overall.usage_missing} request(s) without server usage"),
        **client_cost(end.result, measured),
        **({"servers": server_entries(end.fleet)} if end.fleet is not None else {}),
        per_endpoint={name: MetricBlock(**flat(summarize([r for r in measured if r.endpoint == name], config.slo_bounds)))
                      for name in sorted({r.endpoint for r in measured})},
        **({"tenants": tenant_blocks(loads, records)} if config.tenants else {}),
        server_counters=end.counters.deltas() if end.counters else {},
        placements={plan.name: p.describe() for plan, p in zip(prepared.plans, prepared.placements)},
        mps=end.mps,
        location=location_of(prepared.gpu, socket.gethostname(), config.sharing.gpu),
        **({"workload": loads[0].source.describe()} if not config.tenants else {}),
        gpu=gpu_summary(gpu_csv, [r for r in records if r.in_window], overall.total_output_tokens, end.fleet),
    )


def overall_metrics(config: ScenarioConfig, loads: list[TenantLoad], measured: list[RequestRecord]) -> RunSummary:
    """The whole run's metrics; with tenants, each request judged by its own tenant's SLO."""
    overall = summarize(measured, config.slo_bounds)
    if config.tenants:
        slos = {load.tenant.name: load.tenant.slo for load in loads}
        if any(slos.values()):  # a tenant without an SLO has no objective to miss
            overall = replace(overall, good_requests=sum(is_good(r, slos[r.tenant]) for r in measured))
    return overall


def client_cost(result: LoadResult | None, measured: list[RequestRecord]) -> dict[str, Any]:
    """The load generator's own CPU time, per request too; nothing where the load never ran."""
    if result is None:
        return {}
    return {"client_cpu_s": result.client_cpu_s,
            "client_cpu_ms_per_request": 1000.0 * result.client_cpu_s / max(1, len(measured)),
            "requests_built_in_window": result.built_in_window}


def server_entries(fleet: ServerFleet) -> list[ServerEntry]:
    return [ServerEntry(name=h.name, base_url=h.plan.base_url, pid=h.pid, startup_s=h.startup_s,
                        kv_cache_tokens=h.kv_cache_tokens(), exit_code=h.exit_code())
            for h in fleet.handles]


def gpu_summary(path: Path, records: list[RequestRecord], output_tokens: int,
                fleet: ServerFleet | None) -> GpuWindow | None:
    """GPU statistics over the measurement window (warm-up excluded), from gpu.csv."""
    window = measurement_window(r for r in records if not r.warmup)
    if window is None or not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    groups = {h.name: h.pid for h in fleet.handles} if fleet else {}
    found = gpu_window(rows, window[0], window[1], output_tokens, groups)
    return None if found is None else GpuWindow(**found)


def tenant_blocks(loads: list[TenantLoad], records: list[RequestRecord]) -> dict[str, TenantBlock]:
    """summary.json's block per tenant: the top level's metric keys over the tenant's requests
    in the common window, its load and workload, and, under a step schedule, the same keys
    per step of the aggressor's schedule."""
    steps = step_clock(load.tenant.load for load in loads)
    aggressor = next((load.tenant.name for load in loads if load.tenant.load.steps is steps), None)
    blocks: dict[str, TenantBlock] = {}
    for load in loads:
        tenant = load.tenant
        assert tenant.name is not None
        mine = [r for r in records if r.tenant == tenant.name and r.in_window]
        by_step = None if steps is None else ByStep(
            tenant=aggressor, step_s=steps.step_s, kind=steps.kind,
            steps=[StepBlock(step=i, level=level, **flat(summarize([r for r in mine if r.step == i], tenant.slo)))
                   for i, level in enumerate(steps.levels)])
        blocks[tenant.name] = TenantBlock(
            **tenant.load.summary_fields(),
            servers=[e.name for e in load.endpoints],
            load=tenant.load.model_dump(mode="json"),
            slo_s=tenant.slo,
            seed=tenant.seed,
            workload=load.source.describe(),
            warmup_requests=sum(r.tenant == tenant.name and r.warmup for r in records),
            out_of_window=sum(r.tenant == tenant.name and not r.warmup and not r.in_window for r in records),
            **flat(summarize(mine, tenant.slo)),
            **({"by_step": by_step} if by_step is not None else {}),
        )
    return blocks
