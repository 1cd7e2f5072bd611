"""requests.csv and chunks.csv, appended as requests finish.

Rows are written in the order requests finish (sort by `index` for the order they were
sent) and flushed to disk at least every `FLUSH_S` seconds, so a run killed outright
(SIGKILL, power loss) loses at most its last second of requests.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import IO

from ..core.events import Event, RequestFinished
from ..core.files import CHUNKS, REQUESTS
from ..core.records import RequestRecord
from ..measure.metrics import e2el, queue_time, tpot, ttft

FLUSH_S = 1.0

REQUEST_COLUMNS = [
    "index", "warmup", "endpoint", "tenant", "status", "error", "scheduled", "sent", "first_token", "end",
    "ttft_s", "tpot_s", "e2el_s", "queue_s", "input_tokens", "output_tokens", "usage_reported",
    "streamed_tokens", "usage_disagrees", "chunks", "in_window", "step",
]
# A request is (tenant, index): each tenant numbers its own requests.
CHUNK_COLUMNS = ["index", "t", "tokens", "tenant"]


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def request_row(r: RequestRecord) -> list[object]:
    return [
        r.index, int(r.warmup), r.endpoint, r.tenant or "", r.status, r.error,
        _num(r.scheduled), _num(r.sent), _num(r.first_token), _num(r.end),
        _num(ttft(r)), _num(tpot(r)), _num(e2el(r)), _num(queue_time(r)),
        "" if r.input_tokens is None else r.input_tokens,
        "" if r.output_tokens is None else r.output_tokens,
        int(r.usage_reported), "" if r.streamed_tokens is None else r.streamed_tokens, int(r.usage_disagrees),
        len(r.chunk_times), int(r.measured), "" if r.step is None else r.step,
    ]


def chunk_rows(r: RequestRecord) -> list[list[object]]:
    """Every token-carrying network block of one request: index, arrival time, tokens in it."""
    return [[r.index, f"{t:.6f}", n, r.tenant or ""] for t, n in zip(r.chunk_times, r.chunk_tokens)]


class RequestLog:
    """Listens for finished requests and appends them to the run folder's two CSV files."""

    def __init__(self, folder: Path):
        self._files: list[IO[str]] = [
            open(folder / REQUESTS, "w", newline=""),
            open(folder / CHUNKS, "w", newline=""),
        ]
        self._requests, self._chunks = (csv.writer(f) for f in self._files)
        self._requests.writerow(REQUEST_COLUMNS)
        self._chunks.writerow(CHUNK_COLUMNS)
        self._last_flush = 0.0
        self.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            self._requests.writerow(request_row(event.record))
            self._chunks.writerows(chunk_rows(event.record))
            self.flush_if_due()

    def flush_if_due(self) -> None:
        if time.monotonic() - self._last_flush >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """To the operating system, which keeps it through a SIGKILL of this process."""
        for f in self._files:
            if not f.closed:
                f.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        for f in self._files:
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    def __enter__(self) -> "RequestLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
