"""Metrics, declared once in metric_catalog (docs/metrics.md is generated from it) and
computed here, as pure functions of records.

Key names in the flat summary follow `vllm bench serve --save-result` wherever both tools
compute the same quantity, so results can be compared column for column.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..core.records import RequestRecord
from .summary import LENGTH_PERCENTILES, LatencyStats, RunSummary


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default, as vLLM uses); None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


# --- per request ----------------------------------------------------------------------------


def ttft(rec: RequestRecord) -> float | None:
    """Send → first token event."""
    return None if rec.first_token is None else rec.first_token - rec.sent


def e2el(rec: RequestRecord) -> float | None:
    """Send → end of the response."""
    return None if rec.end is None else rec.end - rec.sent


def tpot(rec: RequestRecord) -> float | None:
    """(E2E − TTFT) / (output tokens − 1): mean time per token after the first."""
    first, total = ttft(rec), e2el(rec)
    if first is None or total is None or rec.output_tokens is None or rec.output_tokens < 2:
        return None
    return (total - first) / (rec.output_tokens - 1)


def queue_time(rec: RequestRecord) -> float:
    """Scheduled → sent: how late the client sent the request (open loop: after its arrival
    time; closed loop: after a worker became free, i.e. the client's own scheduling delay)."""
    return rec.sent - rec.scheduled


def inter_token_latencies(chunk_times: Sequence[float], chunk_tokens: Sequence[int]) -> list[float]:
    """Gaps between token-carrying blocks, each spread evenly over the tokens of its block.

    The first block holds the first token; its other tokens came with it and have no gap
    of their own, so they add no value. The values sum to last block − first block.
    """
    out: list[float] = []
    for i in range(1, len(chunk_times)):
        n = chunk_tokens[i]
        if n > 0:
            out.extend([(chunk_times[i] - chunk_times[i - 1]) / n] * n)
    return out


# --- per run ----------------------------------------------------------------------------------


# Each latency metric: how to get its values (seconds) from the completed requests.
LATENCY_METRICS: dict[str, Callable[[Sequence[RequestRecord]], list[float]]] = {
    "ttft": lambda recs: [v for r in recs if (v := ttft(r)) is not None],
    "tpot": lambda recs: [v for r in recs if (v := tpot(r)) is not None],
    "itl": lambda recs: [v for r in recs for v in inter_token_latencies(r.chunk_times, r.chunk_tokens)],
    "e2el": lambda recs: [v for r in recs if (v := e2el(r)) is not None],
}


def token_lengths(records: Sequence[RequestRecord]) -> dict[str, float | None]:
    """Percentiles and maximum of the prompt and output lengths (tokens) of the given requests:
    the request mix actually sent, whatever the workload said."""
    out: dict[str, float | None] = {}
    for side, values in (("input", [r.input_tokens for r in records]), ("output", [r.output_tokens for r in records])):
        known = [v for v in values if v is not None]
        for q in LENGTH_PERCENTILES:
            out[f"{side}_tokens_p{q}"] = percentile(known, q)
        out[f"{side}_tokens_max"] = max(known, default=None)
    return out


def missed_bounds(rec: RequestRecord, slo: Mapping[str, float]) -> list[str]:
    """The SLO bounds (seconds) a request missed; a failed request misses them all. ITL's
    bound applies to its worst gap."""
    if not rec.ok:
        return list(slo)
    measured = {
        "ttft": ttft(rec),
        "tpot": tpot(rec),
        "e2el": e2el(rec),
        "itl": max(inter_token_latencies(rec.chunk_times, rec.chunk_tokens), default=None),
    }
    return [k for k, limit in slo.items() if measured[k] is not None and measured[k] > limit]


def is_good(rec: RequestRecord, slo: Mapping[str, float]) -> bool:
    """A completed request that meets every SLO (seconds)."""
    return rec.ok and not missed_bounds(rec, slo)


def measurement_window(records: Iterable[RequestRecord]) -> tuple[float, float] | None:
    """First send → last completion of the given (measured) requests."""
    recs = [r for r in records if r.end is not None]
    if not recs:
        return None
    return min(r.sent for r in recs), max(r.end for r in recs)  # type: ignore[type-var]


def summarize(records: Sequence[RequestRecord], slo: Mapping[str, float] | None = None) -> RunSummary:
    """Summarise measured requests; warm-up records are left out here, whoever passes them."""
    measured = [r for r in records if not r.warmup]
    done = [r for r in measured if r.ok]
    failed = Counter(r.status for r in measured if not r.ok)
    window = measurement_window(measured)
    return RunSummary(
        completed=len(done),
        failed=sum(failed.values()),
        failed_by_kind=dict(sorted(failed.items())),
        duration=(window[1] - window[0]) if window else 0.0,
        total_input_tokens=sum(r.input_tokens or 0 for r in done),
        total_output_tokens=sum(r.output_tokens or 0 for r in done),
        latencies={name: LatencyStats.of(values(done)) for name, values in LATENCY_METRICS.items()},
        queue=LatencyStats.of([queue_time(r) for r in measured]),
        good_requests=None if not slo else sum(is_good(r, slo) for r in measured),
        slo_misses=None if not slo else dict(sorted(Counter(b for r in measured if r.ok
                                                            for b in missed_bounds(r, slo)).items())),
        usage_missing=sum(not r.usage_reported for r in done),
        usage_disagrees=sum(r.usage_disagrees for r in done),
        lengths=token_lengths(done),
    )


# --- the GPU over the measurement window (from gpu.csv rows) -----------------------------------


def _float(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def process_memory(processes: str) -> dict[int, float]:
    """MiB per process group from a gpu.csv `processes` cell (pid:pgid:MiB;...)."""
    out: dict[int, float] = {}
    for item in filter(None, (processes or "").split(";")):
        parts = item.split(":")
        if len(parts) == 3 and parts[1].lstrip("-").isdigit():
            out[int(parts[1])] = out.get(int(parts[1]), 0.0) + float(parts[2])
    return out


def gpu_window(rows: Sequence[Mapping[str, Any]], start: float, end: float, output_tokens: int,
               server_groups: Mapping[str, int | None]) -> dict[str, Any] | None:
    """Energy, power, utilisation and memory over [start, end]; None without samples there.

    Energy is the difference of NVML's total-energy counter between the first and the last
    sample inside the window, summed over GPUs; utilisation and power are sample means.
    `server_groups` maps a server's name to its process group, for its peak memory."""
    # Whole GPUs only; MIG instances (labelled gpu:instance) have no power or utilisation.
    inside = [r for r in rows if (t := _float(r.get("t"))) is not None and start <= t <= end
              and ":" not in str(r.get("gpu"))]
    if not inside:
        return None
    energy = 0.0
    energy_known = True
    span = 0.0
    for gpu in sorted({r["gpu"] for r in inside}):
        samples = [r for r in inside if r["gpu"] == gpu]
        first, last = _float(samples[0].get("energy_j")), _float(samples[-1].get("energy_j"))
        span = max(span, float(samples[-1]["t"]) - float(samples[0]["t"]))
        if first is None or last is None:
            energy_known = False
        else:
            energy += last - first

    def series(key: str) -> list[float]:
        return [v for r in inside if (v := _float(r.get(key))) is not None]

    def stat(values: list[float], fn: Callable[[list[float]], float]) -> float | None:
        return fn(values) if values else None

    power, util, mem = series("power_w"), series("gpu_util_pct"), series("mem_used_mib")
    peak: dict[str, float | None] = {}
    for name, group in server_groups.items():
        used = [process_memory(str(r.get("processes") or "")).get(group) for r in inside] if group else []
        peak[name] = max((u for u in used if u is not None), default=None)
    out = {
        "gpu_samples": len(inside),
        "energy_j": energy if energy_known and span > 0 else None,
        "energy_per_output_token_j": energy / output_tokens if energy_known and span > 0 and output_tokens else None,
        "avg_power_w": energy / span if energy_known and span > 0 else stat(power, lambda v: sum(v) / len(v)),
        "mean_power_w": stat(power, lambda v: sum(v) / len(v)),
        "max_power_w": stat(power, max),
        "mean_gpu_util_pct": stat(util, lambda v: sum(v) / len(v)),
        "max_gpu_util_pct": stat(util, max),
        "max_mem_used_mib": stat(mem, max),
        "peak_server_memory_mib": peak,
    }
    return out
