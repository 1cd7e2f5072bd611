"""Async load generator for OpenAI-compatible servers: the scheduler (closed loop at a
concurrency, or open loop at a request rate, or a step schedule), separate from sending one
request (`sending`) and from reading its stream (`stream`), so that what the client reports
is the server's behaviour, not the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import aiohttp

from ..config import ApiConfig, LoadConfig, StepSchedule, step_clock
from ..core.events import Listener, PhaseChanged, RequestFinished
from ..core.records import RequestRecord, RequestSpec
from .sending import ABORTED, CLIENT_ERROR, Endpoint, TokenCounter, clock, new_session, request_body, send_request


class Router:
    """Picks the endpoint for each request: round-robin, or the server of the request's tenant."""

    def __init__(self, endpoints: Sequence[Endpoint], by_tenant: bool):
        self._endpoints = list(endpoints)
        self._by_tenant = {e.tenant: e for e in endpoints} if by_tenant else None

    def __call__(self, spec: RequestSpec) -> Endpoint:
        if self._by_tenant is not None and spec.tenant is not None:
            try:
                return self._by_tenant[spec.tenant]
            except KeyError:
                raise KeyError(f"no server has tenant '{spec.tenant}'") from None
        return self._endpoints[spec.index % len(self._endpoints)]


MAX_PREPARED = 20_000  # requests built ahead of a window bounded by time; later ones are built in it


def requests_for_duration(load: LoadConfig, warmup: Sequence[RequestRecord]) -> int:
    """How many requests a window bounded by time will likely send, over-estimated, so that
    their prompts and bodies are built before it: client work inside the window delays
    requests and breaks up the server's batches.

    Open loop: the mean count plus a margin. Closed loop: every slot sending back to back at
    the fastest warm-up latency (warm-up runs at no more than the window's concurrency, so
    its latencies are no longer than the window's)."""
    assert load.duration_s is not None
    if load.open_loop:
        assert load.request_rate is not None
        expected = load.request_rate * load.duration_s
    else:
        assert load.concurrency is not None
        fastest = min((r.end - r.sent for r in warmup if r.ok and r.end is not None and r.sent is not None),
                      default=0.0)
        if fastest <= 0:
            return min(MAX_PREPARED, 4 * load.concurrency)
        expected = load.duration_s * load.concurrency / fastest
    return min(MAX_PREPARED, math.ceil(1.2 * expected) + 16)


@dataclass
class LoadResult:
    records: list[RequestRecord]
    started: float
    ended: float
    client_cpu_s: float
    aborted: str = ""
    built_in_window: int = 0
    """Measured requests whose prompt and body were built inside the window (0: none)."""


class _GcFreeze:
    """The collector is one per process, so windows that overlap (loads run side by side in
    threads of one process) share one freeze: the first window in collects and freezes, the
    last one out unfreezes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._open == 0:
                gc.collect()
                gc.freeze()
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if self._open == 0:
                    gc.unfreeze()


frozen_gc = _GcFreeze()
"""No full collection over the prepared requests inside the measured window.

A full collection over the prepared requests takes tens of milliseconds and stalls every
request in flight, which shows up as client-made latency. Objects alive when the window
opens are frozen out of every collection until it closes; the collector itself stays on, so
what the window allocates (its records, the GPU monitor's and other threads' garbage) is
still collected. Against the collector paused for the window, benchmarks/loadgen_capacity.py
(4,000 requests, 2 cores) measured the same client: 4,561 vs 4,660 req/s closed loop at
concurrency 64 (run-to-run noise: the vLLM client beside it moved 7 %), open-loop TTFT p99
1.60 vs 1.86 ms, 0.220 vs 0.215 CPU ms per request."""


class LoadGenerator:
    """Drives endpoints with requests from `specs` (indexable), warm-up first, then measured.
    One tenant's load; `LoadGroup` runs several at once on one clock."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        api: ApiConfig,
        load: LoadConfig,
        specs: Any,
        arrivals: Iterator[float] | None = None,
        count_tokens: TokenCounter | None = None,
        publish: Listener | None = None,
        tenant: str | None = None,
    ):
        if load.open_loop and arrivals is None:
            raise ValueError("an open-loop load needs arrival gaps")
        self.api = api
        self.load = load
        self._specs = specs
        self._arrivals = arrivals
        self._route = Router(endpoints, by_tenant=load.routing == "tenant")
        self._count_tokens = count_tokens
        self._publish: Listener = publish or (lambda event: None)
        self.tenant = tenant
        self.records: list[RequestRecord] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._aborted = ""
        self._bodies: dict[tuple[int, str], bytes] = {}
        self._prepared = 0
        self._window: tuple[float, float | None] = (0.0, None)
        self._common_end = math.inf
        self._binned_by: StepSchedule | None = None

    @property
    def aborted(self) -> str:
        """Why the load was aborted ('' while it was not)."""
        return self._aborted

    def abort(self, reason: str) -> None:
        """Stop sending, cancel what is in flight (recorded as aborted) and return soon."""
        if not self._aborted:
            self._aborted = reason
        self._stop.set()
        for task in list(self._in_flight):
            task.cancel()

    def prebuild(self, first: int, count: int) -> None:
        """Build the prompts and serialise the bodies of requests first .. first + count - 1
        ahead of the timed window."""
        prepare = getattr(self._specs, "prepare", None)
        if prepare is not None:
            prepare(first + count)
        for i in range(first, first + count):
            try:
                spec = self._specs[i]
            except IndexError:  # a finite list of specs
                break
            endpoint = self._route(spec)
            self._bodies[(i, endpoint.name)] = request_body(self.api, endpoint.model, spec)

    async def _one(self, session: aiohttp.ClientSession, index: int, scheduled: float, warmup: bool,
                   gate: asyncio.Semaphore | None) -> None:
        spec = self._specs[index]
        endpoint = self._route(spec)
        rec = RequestRecord(index=index, endpoint=endpoint.name, warmup=warmup, scheduled=scheduled,
                            input_tokens=spec.input_tokens, tenant=self.tenant or spec.tenant or endpoint.tenant)
        body = self._bodies.pop((index, endpoint.name), None) or request_body(self.api, endpoint.model, spec)
        try:
            async with gate if gate is not None else contextlib.nullcontext():
                await send_request(session, endpoint.url(self.api), body, self.api, rec, self._count_tokens,
                                   spec.max_tokens > 0)
        except asyncio.CancelledError:
            rec.status, rec.error = ABORTED, self._aborted or "cancelled"
            rec.end = rec.end or clock()
        if rec.status == CLIENT_ERROR:  # what follows would measure this process, not the server
            self.abort(f"the client ran out of open files ({rec.error}); raise its limit (ulimit -n) "
                       "or lower the concurrency")
        if not warmup:
            started = self._window[0]
            rec.in_window = started + self.load.settle_s <= scheduled <= self._common_end
            rec.step = None if self._binned_by is None else self._binned_by.step_at(scheduled - started)
        self.records.append(rec)
        self._publish(RequestFinished(rec))

    def _track(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

    def _level_now(self, steps: StepSchedule) -> float:
        """The step schedule's level now."""
        return steps.levels[steps.step_at(clock() - self._window[0])]

    async def _until_next_step(self, steps: StepSchedule) -> None:
        started, deadline = self._window
        boundary = started + steps.step_end(steps.step_at(clock() - started))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, min(boundary, deadline or boundary) - clock()))

    async def _closed_loop(self, session: aiohttp.ClientSession, first: int, count: int | None,
                           concurrency: int, deadline: float | None, warmup: bool) -> None:
        """`concurrency` workers send back to back; under a step schedule worker k sends only
        while the step's level is above k, so the number in flight follows the schedule."""
        indices = itertools.count(first)
        last = None if count is None else first + count
        steps = None if warmup else self.load.steps

        async def worker(k: int) -> None:
            while not self._stop.is_set():
                if deadline is not None and clock() >= deadline:
                    return
                if steps is not None and self._level_now(steps) <= k:
                    await self._until_next_step(steps)
                    continue
                index = next(indices)
                if last is not None and index >= last:
                    return
                await self._one(session, index, clock(), warmup, None)

        await self._until_aborted([self._track(worker(k)) for k in range(concurrency)])

    async def _until_aborted(self, senders: list[asyncio.Task[None]]) -> None:
        """Wait for the tasks that send; `abort` cancels them, which ends the wait at once."""
        try:
            await asyncio.gather(*senders)
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise

    async def _open_loop(self, session: aiohttp.ClientSession, first: int, count: int | None,
                         deadline: float | None) -> None:
        """Send on the arrival schedule; run as a task of its own, so that `abort` cancels its
        wait for the next arrival however far off that is. Under a step schedule the gaps
        come at rate 1 and are divided by the step's rate; a gap that would cross into the
        next step is dropped there and drawn again at that step's rate (exact for Poisson)."""
        assert self._arrivals is not None and self.load.request_rate is not None
        gate = asyncio.Semaphore(self.load.concurrency) if self.load.concurrency else None
        steps, started = self.load.steps, self._window[0]
        due = clock()
        for index in itertools.count(first):
            if self._stop.is_set() or (count is not None and index >= first + count):
                break
            gap = next(self._arrivals)
            while steps is not None:
                step = steps.step_at(due - started)
                boundary = started + steps.step_end(step)
                rate = steps.levels[step]
                if rate > 0 and (due + gap / rate < boundary or step == len(steps.levels) - 1):
                    gap /= rate
                    break
                due = boundary
                if deadline is not None and due >= deadline:
                    break
            due += gap
            if deadline is not None and due >= deadline:
                break
            # Timers may fire early (uvloop rounds to whole milliseconds): wait until due.
            while (delay := due - clock()) > 0:
                await asyncio.sleep(delay)
            if self._stop.is_set():
                break
            self._track(self._one(session, index, due, False, gate))

    async def warm(self, session: aiohttp.ClientSession) -> None:
        """The warm-up requests (closed loop, at no more than the window's concurrency), then
        the window's requests built, so that no prompt is made inside it."""
        warm, load = self.load.warmup_requests, self.load
        if warm:
            self.prebuild(0, warm)
            await self._closed_loop(session, 0, warm, min(warm, load.concurrency or warm), None, True)
        n = load.n_requests
        self._prepared = n if n is not None else requests_for_duration(load, self.records)
        self.prebuild(warm, self._prepared)

    async def measure(self, session: aiohttp.ClientSession, started: float, common_end: float = math.inf,
                      binned_by: StepSchedule | None = None) -> int:
        """The measured window, from `started` (shared by every tenant of a group): requests
        scheduled after `common_end` are flagged out of it, and each request is given its step
        of `binned_by`. Returns how many of its requests had to be built inside it."""
        load, warm = self.load, self.load.warmup_requests
        deadline = None if load.duration_s is None else started + load.duration_s
        self._window, self._common_end, self._binned_by = (started, deadline), common_end, binned_by
        if not self._stop.is_set():
            if load.open_loop:
                await self._until_aborted([self._track(self._open_loop(session, warm, load.n_requests, deadline))])
            else:
                assert load.concurrency is not None
                await self._closed_loop(session, warm, load.n_requests, load.concurrency, deadline, False)
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        self.records.sort(key=lambda r: r.index)
        return sum(r.index >= warm + self._prepared for r in self.records)

    async def run(self) -> LoadResult:
        """This load alone: a group of one."""
        return await LoadGroup([self], self._publish).run()


class LoadGroup:
    """Several tenants' loads in one process on one clock: every warm-up first, then one
    window that opens for all at the same instant, with garbage collection paused for it
    (see `frozen_gc`) once, for the whole group. Several tenants' loads are each bounded by
    time, and a request counts only when it was scheduled while every tenant was loading,
    i.e. before the first of them stops (`in_window`); the others are kept, flagged. Every
    request is binned by the first step schedule's steps (the aggressor's), so a victim's
    latency can be read against the aggressor's level."""

    def __init__(self, generators: Sequence[LoadGenerator], publish: Listener | None = None):
        self.generators = list(generators)
        self._publish: Listener = publish or (lambda event: None)

    @property
    def records(self) -> list[RequestRecord]:
        return [r for g in self.generators for r in g.records]

    def abort(self, reason: str) -> None:
        for generator in self.generators:
            generator.abort(reason)

    async def run(self) -> LoadResult:
        generators = self.generators
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(new_session(g.api)) for g in generators]
            self._publish(PhaseChanged("warmup", clock()))
            await asyncio.gather(*(g.warm(s) for g, s in zip(generators, sessions)))
            self._publish(PhaseChanged("measure", clock()))
            binned_by = step_clock(g.load for g in generators)
            with frozen_gc():
                cpu0, started = time.process_time(), clock()
                common_end = started + min(g.load.duration_s or math.inf for g in generators)
                late = await asyncio.gather(*(g.measure(s, started, common_end, binned_by)
                                              for g, s in zip(generators, sessions)))
                ended, cpu = clock(), time.process_time() - cpu0
        self._publish(PhaseChanged("done", clock()))
        aborted = next((g.aborted for g in generators if g.aborted), "")
        return LoadResult(self.records, started, ended, cpu, aborted, sum(late))
