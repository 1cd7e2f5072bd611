"""How much tenants sharing a GPU hurt each other: solo runs against the shared run.

Each tenant runs alone ("solo") and together with the others ("shared") for the same duration;
these functions turn the two sets of summaries into per-metric slowdowns, each tenant's score
on the quantity that measures what the GPU gave it, scenario-wide scores (Jain's fairness,
weighted speedup) and the shared phase's output over the interval every tenant loaded. Pure
functions, no I/O, so they are easy to test; interference_doc writes and reads what they give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from ..core.records import RequestRecord
from .metric_catalog import METRICS, MetricSpec
from .metrics import measurement_window
from .results import Record, TenantBlock

Summary = Mapping[str, float | None]  # one tenant's flat summary: summary.json key -> value

INTERFERENCE_METRICS: tuple[MetricSpec, ...] = tuple(METRICS[key] for key in (
    "p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "p99_itl_ms", "p50_e2el_ms", "p99_e2el_ms",
    "output_throughput", "good_request_fraction", "request_goodput"))
"""The summary keys compared between solo and shared; the catalogue says which way each is good."""

LEVEL_METRICS: tuple[MetricSpec, ...] = tuple(METRICS[key] for key in (
    "p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "output_throughput", "good_request_fraction"))
"""What a victim is compared on per level of its aggressor's load (each is kept per step)."""


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def slowdown(solo: float | None, shared: float | None) -> float | None:
    """The plain ratio shared / solo, whatever the metric's direction.

    For latencies above 1 means sharing made it worse; for throughputs below 1 does.
    None when either side is missing or not finite, or solo is 0 (no meaningful ratio).
    """
    if not (_finite(solo) and _finite(shared)) or solo == 0:
        return None
    return shared / solo


def jain_fairness(values: Sequence[float | None]) -> float | None:
    """Jain's index (Σx)² / (n·Σx²) over the tenants' kept shares, in [1/n, 1].

    1 means every tenant kept the same share of what it got alone; 1/n means one tenant
    got everything. None for no values, any missing, non-finite or negative value, or all
    zeros. Values are divided by their maximum first (the index is scale invariant) so the
    squares neither overflow nor underflow, and fsum makes the result independent of order.
    """
    if not values or not all(_finite(v) and v >= 0 for v in values):
        return None
    top = max(values)
    if top == 0:
        return None
    scaled = [v / top for v in values]
    return math.fsum(scaled) ** 2 / (len(scaled) * math.fsum(x * x for x in scaled))


def weighted_speedup(kept: Sequence[float | None]) -> float | None:
    """System throughput STP = Σ shared_i / solo_i, the sum of the shares the tenants kept.

    Above 1 means packing the tenants together beats letting them take turns on the GPU.
    None for no values or any missing one.
    """
    if not kept or any(v is None for v in kept):
        return None
    return math.fsum(kept)


class TenantComparison(Record):
    """One tenant's value of one metric, solo and shared, and their ratio: a row of
    interference.csv and of interference.json's `tenants`."""

    tenant: str
    metric: str
    solo: float | None
    shared: float | None
    slowdown: float | None


def _tenants(solo: Mapping[str, Any], shared: Mapping[str, Any]) -> list[str]:
    """The tenants in both runs, sorted; one measured on only one side cannot be compared."""
    unmatched = sorted(set(solo) ^ set(shared))
    if unmatched:
        raise ValueError(f"tenants not in both the solo and the shared runs: {', '.join(unmatched)}")
    return sorted(solo)


def compare_tenants(solo: Mapping[str, Summary], shared: Mapping[str, Summary]) -> list[TenantComparison]:
    """One row per tenant (by name) and metric (INTERFERENCE_METRICS order); missing keys are None."""
    rows = []
    for tenant in _tenants(solo, shared):
        for metric in INTERFERENCE_METRICS:
            before, after = solo[tenant].get(metric.key), shared[tenant].get(metric.key)
            rows.append(TenantComparison(tenant=tenant, metric=metric.key, solo=before, shared=after,
                                         slowdown=slowdown(before, after)))
    return rows


def rows_for_csv(comparisons: Sequence[TenantComparison]) -> list[dict[str, Any]]:
    """interference.csv rows: tenant, metric, solo, shared, slowdown."""
    return [c.model_dump() for c in comparisons]


# --- what each tenant is scored on ---------------------------------------------------------------

ScoredOn = Literal["throughput", "goodput", "capacity"]


@dataclass(frozen=True)
class Rates:
    """A tenant's rates over one phase: what its score is taken from."""

    output_throughput: float | None
    goodput: float | None
    """Requests that met the SLO per second of the tenant's window. Not `request_goodput`,
    which divides by the span its own requests took: an open loop sends the same requests in
    the same window alone and shared, so a span that ends a little later would read as
    goodput lost when every request met its SLO."""

    @classmethod
    def of(cls, block: TenantBlock) -> Rates:
        window = block.load.duration_s
        measured = None if window is None else window - block.load.settle_s
        good = block.good_requests
        return cls(block.output_throughput,
                   good / measured if good is not None and measured else block.request_goodput)


@dataclass(frozen=True)
class TenantPhases:
    """One tenant as scoring sees it: how its load was offered, whether it has an SLO, and its
    rates alone, shared and, where one was measured, on a GPU of its own (the dedicated reference)."""

    open_loop: bool
    has_slo: bool
    solo: Rates
    shared: Rates
    dedicated: Rates | None = None


class TenantScore(Record):
    """The share of its own quantity a tenant kept shared, and which quantity that is: a closed
    loop's output tok/s is what the GPU gave it; an open loop's is its arrival rate whatever
    the GPU did, so it is scored by the requests that met its SLO (goodput) or by the highest
    rate that meets it (capacity), and without an SLO it is not scored."""

    scored_on: ScoredOn | None
    """None: not scored (`reason` says why), and left out of fairness and STP."""
    reason: str
    solo: float | None = None
    shared: float | None = None
    kept: float | None = None
    """shared / solo of the quantity scored on (capacity: as the capacity search gave it)."""
    dedicated: float | None = None
    kept_vs_dedicated: float | None = None
    """shared / dedicated: the share kept against a GPU of its own; None without that reference."""


REASONS: dict[ScoredOn | None, str] = {
    "throughput": "closed loop: its output tok/s is what the GPU gave it",
    "goodput": "open loop with an SLO: its requests that met the SLO per second of its window",
    "capacity": "open loop with an SLO: the highest request rate that meets the SLO",
    None: "not scored: an open loop without an SLO, whose throughput is its arrival rate",
}


def scored_on(tenant: TenantPhases, has_capacity: bool) -> ScoredOn | None:
    """The quantity a tenant is scored on, None where none says what the GPU gave it."""
    if not tenant.open_loop:
        return "throughput"
    if not tenant.has_slo:
        return None
    return "capacity" if has_capacity else "goodput"


def score_tenant(tenant: TenantPhases, capacity_kept: float | None = None) -> TenantScore:
    """One tenant's score; `capacity_kept` (an open loop with an SLO only) is used as given."""
    quantity = scored_on(tenant, capacity_kept is not None)
    if capacity_kept is not None and quantity != "capacity":
        raise ValueError("capacity kept is given for a tenant that is not an open loop with an SLO")
    if quantity is None:
        return TenantScore(scored_on=None, reason=REASONS[None])
    if quantity == "capacity":
        return TenantScore(scored_on=quantity, reason=REASONS[quantity], kept=capacity_kept)

    def rate(rates: Rates) -> float | None:
        return rates.output_throughput if quantity == "throughput" else rates.goodput

    dedicated = None if tenant.dedicated is None else rate(tenant.dedicated)
    solo, shared = rate(tenant.solo), rate(tenant.shared)
    return TenantScore(scored_on=quantity, reason=REASONS[quantity], solo=solo, shared=shared,
                       kept=slowdown(solo, shared), dedicated=dedicated, kept_vs_dedicated=slowdown(dedicated, shared))


class ScenarioScores(Record):
    """Scenario-wide scores of one shared run against its tenants' solo runs (interference.json's
    `scores`): fairness and STP over the scored tenants' kept shares, against solo and against
    the dedicated reference."""

    tenants: int
    scored: dict[str, TenantScore] = {}
    fairness: float | None
    stp: float | None
    fairness_vs_dedicated: float | None = None
    stp_vs_dedicated: float | None = None
    # Written by versions that scored every tenant on its output tok/s and added the tenants'
    # rates over their own spans; read so that such a file still reads, never written now.
    normalised_throughput: dict[str, float | None] | None = None
    aggregate_output_throughput: float | None = None
    solo_output_throughput_sum: float | None = None


def score_scenario(tenants: Mapping[str, TenantPhases],
                   capacity_kept: Mapping[str, float] | None = None) -> ScenarioScores:
    """Each tenant's score (by name) and fairness and STP over the scored ones. `capacity_kept`
    (tenant: shared capacity / solo capacity, from a capacity search) scores an open-loop tenant
    with an SLO on capacity instead of goodput; a tenant it names must be one."""
    capacity = dict(capacity_kept or {})
    unknown = sorted(set(capacity) - set(tenants))
    if unknown:
        raise ValueError(f"capacity kept for tenants not in the scenario: {', '.join(unknown)}")
    scored: dict[str, TenantScore] = {}
    for name in sorted(tenants):
        try:
            scored[name] = score_tenant(tenants[name], capacity.get(name))
        except ValueError as err:
            raise ValueError(f"tenant {name}: {err}") from None
    counted = [s for s in scored.values() if s.scored_on is not None]
    kept = [s.kept for s in counted]
    against_dedicated = [s.kept_vs_dedicated for s in counted]
    return ScenarioScores(
        tenants=len(tenants), scored=scored, fairness=jain_fairness(kept), stp=weighted_speedup(kept),
        fairness_vs_dedicated=jain_fairness(against_dedicated), stp_vs_dedicated=weighted_speedup(against_dedicated))


# --- the shared phase's output over the interval where every tenant loads --------------------------


class CommonThroughput(Record):
    """Output tokens that arrived while every tenant was loading, [latest first send, earliest
    last completion] across tenants, over that interval: one rate on one span, where the
    tenants' own rates each cover their own span (an idle step of one, the tail of another)."""

    interval_s: float
    output_tokens: int
    output_throughput: float
    token_times: Literal["chunks", "estimated"]
    """chunks: each token counted when its chunk arrived; estimated: the log had no chunk times
    (chunks.csv not written, or no stream), so each request's tokens were spread evenly from its
    first token to its end."""


def common_interval(spans: Sequence[tuple[float, float] | None]) -> tuple[float, float] | None:
    """[latest start, earliest end] of the spans; None if any span is missing or they do not overlap."""
    if not spans or any(span is None for span in spans):
        return None
    start = max(span[0] for span in spans if span is not None)
    end = min(span[1] for span in spans if span is not None)
    return (start, end) if end > start else None


def token_arrivals(record: RequestRecord) -> tuple[list[tuple[float, int]], bool]:
    """When a request's output tokens arrived, as (time, tokens): its chunks (and True), or,
    without chunk times, its output tokens spread evenly from its first token to its end, the
    first at the first token (and False); nothing for a request that did not end."""
    if record.chunk_times:
        return list(zip(record.chunk_times, record.chunk_tokens)), True
    n = record.output_tokens or 0
    if record.end is None or n == 0:
        return [], False
    if record.first_token is None:  # not streamed: everything came with the end
        return [(record.end, n)], False
    if n == 1:
        return [(record.first_token, 1)], False
    step = (record.end - record.first_token) / (n - 1)
    return [(record.first_token + k * step, 1) for k in range(n)], False


def common_output_throughput(records: Mapping[str, Sequence[RequestRecord]]) -> CommonThroughput | None:
    """The shared phase's output tok/s over the interval where every tenant loads (by tenant:
    its requests). Each tenant's span is its measured requests' first send → last completion;
    every token any tenant's non-warm-up request received inside the interval counts, measured
    or not (a request sent after the window closed still took the GPU's time in it). None
    without two spans that overlap."""
    spans = [measurement_window(r for r in recs if r.measured) for recs in records.values()]
    interval = common_interval(spans) if records else None
    if interval is None:
        return None
    start, end = interval
    tokens, exact = 0, True
    for recs in records.values():
        for record in recs:
            if record.warmup:
                continue
            arrivals, from_chunks = token_arrivals(record)
            exact = exact and (from_chunks or not arrivals)
            tokens += sum(n for t, n in arrivals if start <= t <= end)
    return CommonThroughput(interval_s=end - start, output_tokens=tokens, output_throughput=tokens / (end - start),
                            token_times="chunks" if exact else "estimated")


# --- a victim per level of its aggressor's load ----------------------------------------------------


@dataclass(frozen=True)
class StepValue:
    """A victim's value of one metric over one step of its aggressor's schedule."""

    step: int
    level: float
    value: float | None


class LevelComparison(Record):
    """A victim's value of one metric over one loaded step of its aggressor against its value
    alone, and whether this is the level where it fared worst (interference.json's `levels`)."""

    metric: str
    step: int
    level: float
    solo: float | None
    shared: float | None
    slowdown: float | None
    worst: bool


def loaded_levels(metric: MetricSpec, solo: float | None, steps: Sequence[StepValue]) -> list[LevelComparison]:
    """One row per step in which the aggressor loaded (level above 0: an idle step is no
    neighbour, and blending it in would hide what a loaded one costs), the worst marked: the
    highest slowdown of a latency, the lowest of a throughput; none where no step has one."""
    if metric.higher_is_better is None:
        raise ValueError(f"{metric.key}: the catalogue gives it no direction, so no level is worst")
    rows = [(step, slowdown(solo, step.value)) for step in steps if step.level > 0]
    # worse first, then the lower level: a tie goes to the first level that reached it
    ranked = sorted((ratio if metric.higher_is_better else -ratio, i)
                    for i, (_, ratio) in enumerate(rows) if ratio is not None)
    worst = ranked[0][1] if ranked else None
    return [LevelComparison(metric=metric.key, step=step.step, level=step.level, solo=solo, shared=step.value,
                            slowdown=ratio, worst=i == worst) for i, (step, ratio) in enumerate(rows)]
