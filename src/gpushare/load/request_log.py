"""requests.csv and chunks.csv, appended as requests finish, and read back as records.

Rows are written in the order requests finish (sort by `index` for the order they were
sent) and flushed to disk at least every `FLUSH_S` seconds, so a run killed outright
(SIGKILL, power loss) loses at most its last second of requests.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import IO, Mapping

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


def _float(text: str | None) -> float | None:
    return None if not text else float(text)


def _int(text: str | None) -> int | None:
    return None if not text else int(text)


def _record(row: Mapping[str, str], chunks: tuple[list[float], list[int]] | None) -> RequestRecord:
    """A requests.csv row as a record; a column an older log lacks takes the record's default."""
    times, tokens = chunks or ([], [])
    sent, scheduled = float(row["sent"]), _float(row.get("scheduled"))
    return RequestRecord(
        index=int(row["index"]), endpoint=row["endpoint"], warmup=row["warmup"] == "1",
        scheduled=sent if scheduled is None else scheduled, sent=sent, first_token=_float(row["first_token"]),
        end=_float(row["end"]), chunk_times=times, chunk_tokens=tokens, input_tokens=_int(row.get("input_tokens")),
        output_tokens=_int(row.get("output_tokens")), usage_reported=row.get("usage_reported") == "1",
        streamed_tokens=_int(row.get("streamed_tokens")), status=row["status"], error=row.get("error") or "",
        tenant=row.get("tenant") or None, step=_int(row.get("step")), in_window=row.get("in_window") != "0")


def read_request_log(folder: Path) -> list[RequestRecord]:
    """The run folder's requests, in the order they finished, with their chunks where the run
    wrote chunks.csv (a log from before it did gives records without chunk times). What the
    log above wrote reads back as the records it was given, times to the microsecond."""
    chunks: dict[tuple[str, int], tuple[list[float], list[int]]] = {}
    if (folder / CHUNKS).exists():
        with open(folder / CHUNKS, newline="") as f:
            for row in csv.DictReader(f):
                times, tokens = chunks.setdefault((row.get("tenant") or "", int(row["index"])), ([], []))
                times.append(float(row["t"]))
                tokens.append(int(row["tokens"]))
    with open(folder / REQUESTS, newline="") as f:
        return [_record(row, chunks.get((row.get("tenant") or "", int(row["index"]))))
                for row in csv.DictReader(f)]
