"""Ctrl-C, SIGTERM and SIGHUP, installed once at the command line's edge.

What a signal does depends on where the run is:
- in an interruptible stretch (starting servers, between matrix cells) it raises
  `Interrupted`, which unwinds to the run's clean-up;
- during the load, it asks the load to stop (the run then writes what it measured);
- during clean-up (stopping servers, writing results) it is recorded and never raised, so
  that the escalation to SIGKILL always runs and no file is left half-written. A second
  signal there says "hurry": servers are killed at once instead of after their grace.

SIGHUP (a closed terminal, a dropped ssh session) is treated as SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Callable, Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):
    """A signal arrived in an interruptible stretch; the message names it."""


class Interrupts:
    """Signals received by this command, and what each stretch of the run does with them.

    Not installed (e.g. a library call), it never sees a signal: every stretch runs as is."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._modes: list[str] = ["raise"]
        self._pending = False
        self._stop_load: Callable[[str], None] | None = None
        self._previous: dict[int, object] = {}

    # --- installation, at the CLI edge -------------------------------------------------------

    @contextlib.contextmanager
    def installed(self, ignore_after: bool = False) -> Iterator["Interrupts"]:
        """Handle the signals inside the block; after it, restore the previous handlers, or
        ignore the signals (`ignore_after`, for a process that is about to exit)."""
        self._previous = {s: signal.signal(s, self._handle) for s in HANDLED}
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, signal.SIG_IGN if ignore_after else handler)  # type: ignore[arg-type]

    @property
    def first(self) -> str | None:
        return self.received[0] if self.received else None

    def mark(self) -> int:
        """A position to ask `since` about later."""
        return len(self.received)

    def since(self, mark: int) -> bool:
        return len(self.received) > mark

    def signal_since(self, mark: int) -> str | None:
        """The first signal received since `mark`. An `Interrupted` raised inside library code
        can come out wrapped in that library's own exception: this tells what caused it."""
        return self.received[mark] if self.since(mark) else None

    def _handle(self, signum: int, frame: object = None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        mode = self._modes[-1]
        if mode == "raise":
            raise Interrupted(name)
        # Also pending during the load: one that comes as the load ends finds nothing left to
        # stop, and must still stop what would come next (a matrix's next cell).
        self._pending = True
        if mode == "load" and self._stop_load is not None:
            self._stop_load(f"interrupted by {name}")

    # --- stretches ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mode(self, mode: str) -> Iterator[None]:
        self._modes.append(mode)
        try:
            yield
        finally:
            self._modes.pop()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Signals raise `Interrupted` here; one recorded during an earlier deferred stretch
        raises on entry."""
        if self._pending:
            self._pending = False
            raise Interrupted(self.received[-1])
        with self._mode("raise"):
            yield

    def checkpoint(self) -> None:
        """Raise `Interrupted` now for a signal recorded during an earlier deferred stretch."""
        with self.interruptible():
            pass

    def deferred(self) -> contextlib.AbstractContextManager[None]:
        """Signals are recorded, never raised: clean-up runs to its end."""
        return self._mode("defer")

    @contextlib.contextmanager
    def stopping_load(self, stop: Callable[[str], None]) -> Iterator[None]:
        """During the load: a signal stops it. Delivered through the event loop so that the
        load's tasks are cancelled from the loop, not from inside a signal handler."""
        loop = asyncio.get_running_loop()
        self._stop_load = stop
        installed = []
        with self._mode("load"):
            try:
                if self._previous:  # only where the command installed us
                    for s in HANDLED:
                        loop.add_signal_handler(s, self._handle, s)
                        installed.append(s)
                yield
            finally:
                for s in installed:
                    loop.remove_signal_handler(s)
                    signal.signal(s, self._handle)
                self._stop_load = None

    def hurry(self, mark: int) -> Callable[[], bool]:
        """For clean-up begun at `mark`: true once another signal has arrived since."""
        return lambda: self.since(mark)
