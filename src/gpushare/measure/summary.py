"""What one run's measured requests came to, as types: the numbers `metrics.summarize` computes
and the catalogue reads its keys from (metric_catalog), kept apart from both so that neither
imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

PERCENTILES = (50, 95, 99)
LENGTH_PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class LatencyStats:
    """One latency metric over a set of requests, in milliseconds."""

    mean: float | None
    median: float | None
    std: float | None
    p: dict[int, float | None]

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "LatencyStats":
        if not len(seconds):
            return cls(None, None, None, {q: None for q in PERCENTILES})
        ms = np.asarray(seconds, dtype=float) * 1000.0
        return cls(
            float(ms.mean()),
            float(np.median(ms)),
            float(ms.std()),
            {q: float(np.percentile(ms, q)) for q in PERCENTILES},
        )


@dataclass(frozen=True)
class RunSummary:
    """The numbers of one run (or one endpoint of it) over its measured requests."""

    completed: int
    failed: int
    failed_by_kind: dict[str, int]
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    latencies: dict[str, LatencyStats]
    queue: LatencyStats
    good_requests: int | None = None
    slo_misses: dict[str, int] | None = None
    """Per SLO bound, the completed requests that missed it (failed ones miss every bound)."""
    usage_missing: int = 0
    usage_disagrees: int = 0
    lengths: dict[str, float | None] = field(default_factory=dict)

    @property
    def request_throughput(self) -> float:
        return self.completed / self.duration if self.duration > 0 else 0.0

    @property
    def output_throughput(self) -> float:
        return self.total_output_tokens / self.duration if self.duration > 0 else 0.0

    @property
    def total_token_throughput(self) -> float:
        return (self.total_input_tokens + self.total_output_tokens) / self.duration if self.duration > 0 else 0.0

    @property
    def request_goodput(self) -> float | None:
        if self.good_requests is None:
            return None
        return self.good_requests / self.duration if self.duration > 0 else 0.0

    @property
    def good_request_fraction(self) -> float | None:
        total = self.completed + self.failed
        return None if self.good_requests is None or not total else self.good_requests / total
