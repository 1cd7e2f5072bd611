"""Typed events of a run, published by the load generator to whoever listens.

Progress, the server watch, the request log and the servers' counters each subscribe to
what they need instead of being wired into the generator one callback at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

from .records import RequestRecord

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


class Publisher:
    """Delivers each event to every listener, in the order they subscribed."""

    def __init__(self, listeners: list[Callable[[Any], None]] | tuple[Callable[[Any], None], ...] = ()):
        self._listeners = list(listeners)

    def subscribe(self, listener: Callable[[Any], None]) -> None:
        self._listeners.append(listener)

    def __call__(self, event: Any) -> None:
        for listener in self._listeners:
            listener(event)
