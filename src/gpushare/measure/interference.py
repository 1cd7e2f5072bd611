"""How much tenants sharing a GPU hurt each other: solo runs against the shared run.

Each tenant runs alone ("solo") and together with the others ("shared") for the same duration;
these functions turn the two sets of flat summaries into per-metric slowdowns and scenario-wide
scores (Jain's fairness, weighted speedup). Pure functions, no I/O, so they are easy to test;
interference_doc writes and reads what they give.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .metric_catalog import METRICS, MetricSpec
from .results import Record

Summary = Mapping[str, float | None]  # one tenant's flat summary: summary.json key -> value

INTERFERENCE_METRICS: tuple[MetricSpec, ...] = tuple(METRICS[key] for key in (
    "p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "p99_itl_ms", "p50_e2el_ms", "p99_e2el_ms",
    "output_throughput", "good_request_fraction", "request_goodput"))
"""The summary keys compared between solo and shared; the catalogue says which way each is good."""


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


class TenantComparison(Record):
    """One tenant's value of one metric, solo and shared, and their ratio: a row of
    interference.csv and of interference.json's `tenants`."""

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
            rows.append(TenantComparison(tenant=tenant, metric=metric.key, solo=before, shared=after,
                                         slowdown=slowdown(before, after)))
    return rows


class ScenarioScores(Record):
    """Scenario-wide scores of one shared run against its tenants' solo runs (interference.json's
    `scores`)."""

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
    return [c.model_dump() for c in comparisons]
