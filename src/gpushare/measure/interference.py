"""How much tenants sharing a GPU hurt each other: solo runs against the shared run.

Each tenant runs alone ("solo") and together with the others ("shared") for the same duration;
these functions turn the two sets of flat summaries into per-metric slowdowns and scenario-wide
scores (Jain's fairness, weighted speedup). Pure functions, no I/O, so they are easy to test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

Summary = Mapping[str, float | None]  # one tenant's flat summary: summary.json key -> value


@dataclass(frozen=True)
class InterferenceMetric:
    """A summary key compared between solo and shared, and which direction is good."""

    key: str
    label: str
    higher_is_better: bool


INTERFERENCE_METRICS: tuple[InterferenceMetric, ...] = (
    InterferenceMetric("p50_ttft_ms", "P50 TTFT", False),
    InterferenceMetric("p99_ttft_ms", "P99 TTFT", False),
    InterferenceMetric("p50_tpot_ms", "P50 TPOT", False),
    InterferenceMetric("p99_tpot_ms", "P99 TPOT", False),
    InterferenceMetric("p99_itl_ms", "P99 ITL", False),
    InterferenceMetric("p50_e2el_ms", "P50 E2E latency", False),
    InterferenceMetric("p99_e2el_ms", "P99 E2E latency", False),
    InterferenceMetric("output_throughput", "Output throughput", True),
    InterferenceMetric("good_request_fraction", "SLO attainment", True),
    InterferenceMetric("request_goodput", "Request goodput", True),
)


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
    """Jain's index (Σx)² / (n·Σx²) over the tenants' normalised throughputs, in [1/n, 1].

    1 means every tenant kept the same share of its solo throughput; 1/n means one tenant
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


def weighted_speedup(normalised: Sequence[float | None]) -> float | None:
    """System throughput STP = Σ shared_i / solo_i, the sum of the normalised throughputs.

    Above 1 means packing the tenants together beats letting them take turns on the GPU.
    None for no values or any missing one.
    """
    if not normalised or any(v is None for v in normalised):
        return None
    return math.fsum(normalised)


@dataclass(frozen=True)
class TenantComparison:
    """One tenant's value of one metric, solo and shared, and their ratio."""

    tenant: str
    metric: str
    solo: float | None
    shared: float | None
    slowdown: float | None


def _tenants(solo: Mapping[str, Summary], shared: Mapping[str, Summary]) -> list[str]:
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
            rows.append(TenantComparison(tenant, metric.key, before, after, slowdown(before, after)))
    return rows


@dataclass(frozen=True)
class ScenarioScores:
    """Scenario-wide scores of one shared run against its tenants' solo runs."""

    tenants: int
    normalised_throughput: dict[str, float | None]
    fairness: float | None
    stp: float | None
    aggregate_output_throughput: float | None
    solo_output_throughput_sum: float | None


def _total(values: Sequence[float | None]) -> float | None:
    """Sum of values, None if any is missing or not finite (a partial sum would mislead)."""
    return math.fsum(values) if all(_finite(v) for v in values) else None


def score_scenario(solo: Mapping[str, Summary], shared: Mapping[str, Summary]) -> ScenarioScores:
    """Normalised throughput per tenant (shared/solo output_throughput), fairness, STP and totals."""
    tenants = _tenants(solo, shared)
    solo_tp = [solo[t].get("output_throughput") for t in tenants]
    shared_tp = [shared[t].get("output_throughput") for t in tenants]
    normalised = {t: slowdown(a, b) for t, a, b in zip(tenants, solo_tp, shared_tp)}
    return ScenarioScores(
        tenants=len(tenants),
        normalised_throughput=normalised,
        fairness=jain_fairness(list(normalised.values())),
        stp=weighted_speedup(list(normalised.values())),
        aggregate_output_throughput=_total(shared_tp),
        solo_output_throughput_sum=_total(solo_tp),
    )


def rows_for_csv(comparisons: Sequence[TenantComparison]) -> list[dict[str, Any]]:
    """interference.csv rows: tenant, metric, solo, shared, slowdown."""
    return [asdict(c) for c in comparisons]


def scores_dict(scores: ScenarioScores) -> dict[str, Any]:
    """interference.json content (JSON-ready: only str, int, float and None)."""
    return asdict(scores)
