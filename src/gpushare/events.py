"""Typed events of a run (published by the load generator) and of a matrix (by its executor),
to whoever listens.

Progress, the server watch, the request log and the servers' counters each subscribe to
what they need instead of being wired into the generator one callback at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Union

from .load.records import RequestRecord

if TYPE_CHECKING:
    from .measure.results import CellEntry

Phase = Literal["warmup", "measure", "done"]


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """A request got its outcome (ok or failed); its record is final."""

    record: RequestRecord


@dataclass(frozen=True, slots=True)
class PhaseChanged:
    """The load entered a phase: warm-up, the measured window (prompts already built), or done."""

    phase: Phase
    t: float


Event = Union[RequestFinished, PhaseChanged]
Listener = Callable[[Event], None]


# --- a matrix's events: what executors report, wherever the cells run -----------------------


@dataclass(frozen=True, slots=True)
class CellStarted:
    """A cell's load is about to start on `where` (a GPU, a node)."""

    scenario: str
    cell: str
    where: str


@dataclass(frozen=True, slots=True)
class CellFinished:
    """A cell ended: its matrix.json entry (a cell never run gets one too) and exit code."""

    entry: "CellEntry"
    exit_code: int


@dataclass(frozen=True, slots=True)
class ServersTimed:
    """A scenario's servers took `seconds` to start or to stop."""

    what: Literal["start", "stop"]
    seconds: float


MatrixEvent = Union[CellStarted, CellFinished, ServersTimed]


class Publisher:
    """Delivers each event to every listener, in the order they subscribed."""

    def __init__(self, listeners: list[Callable[[Any], None]] | tuple[Callable[[Any], None], ...] = ()):
        self._listeners = list(listeners)

    def subscribe(self, listener: Callable[[Any], None]) -> None:
        self._listeners.append(listener)

    def __call__(self, event: Any) -> None:
        for listener in self._listeners:
            listener(event)
