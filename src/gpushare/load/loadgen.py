"""Async load generator for OpenAI-compatible servers.

The scheduler (closed loop at a concurrency, or open loop at a request rate) is separate
from the backend (`send_request`, which speaks the OpenAI HTTP API). The stream is read in
network blocks: each block is time-stamped once and its server-sent events are counted
and checked with byte searches, and only the first events (to find the first token) and the
last ones (the last token, usage, errors, [DONE]) are parsed as JSON. That keeps the
client's own cost per request small, so that what it reports is the server's behaviour, not
the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import threading
import itertools
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import aiohttp

from ..config import ApiConfig, LoadConfig, StepSchedule, step_clock
from ..core.events import Listener, PhaseChanged, RequestFinished
from ..core.records import RequestRecord, RequestSpec

clock = time.perf_counter

HTTP_ERROR = "http_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
STREAM_ERROR = "stream_error"
BAD_RESPONSE = "bad_response"
ABORTED = "aborted"
CLIENT_ERROR = "client_error"
"""This process failed the request (it ran out of open files), not the server."""
_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)

_TAIL_BYTES = 8192
_READ_BUFFER = 4 * 1024 * 1024
# How the lines of a server-sent event begin: a comment, or one of its fields.
_SSE_LINES = (b":", b"data:", b"event:", b"id:", b"retry:")


@dataclass(frozen=True)
class Endpoint:
    """One server the load is sent to."""

    name: str
    base_url: str
    model: str
    tenant: str | None = None

    def url(self, api: ApiConfig) -> str:
        path = "/v1/completions" if api.endpoint == "completions" else "/v1/chat/completions"
        return self.base_url.rstrip("/") + path


# --- request bodies ----------------------------------------------------------------------


def request_body(api: ApiConfig, model: str, spec: RequestSpec) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": spec.max_tokens,
        "temperature": api.temperature,
        "stream": api.stream,
    }
    if api.endpoint == "chat":
        body["messages"] = spec.prompt
    else:
        body["prompt"] = spec.prompt
    if api.stream:
        body["stream_options"] = {"include_usage": True}
    if api.ignore_eos:
        body["ignore_eos"] = True
    body.update(api.extra_body)
    return json.dumps(body).encode()


# --- stream accounting (pure: bytes and times in, counts out) -------------------------------


def _event_data(event: bytes) -> bytes | None:
    """The payload of one server-sent event (its `data:` lines joined), or None for comments."""
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _well_formed(event: bytes, data: bytes | None) -> bool:
    """Whether an event (without its separator) is comments and fields whose data (as
    `_event_data` gives it), if any, is a JSON object (judged by its first byte) or [DONE]."""
    for line in event.splitlines():
        if line and not line.startswith(_SSE_LINES):
            return False
    return data is None or data.startswith(b"{") or data.strip() == b"[DONE]"


def _choice_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or choice.get("message") or {}
    parts = [delta.get("content"), delta.get("reasoning_content"), delta.get("reasoning")]
    text = "".join(p for p in parts if isinstance(p, str))
    if not text and delta.get("tool_calls"):
        text = json.dumps(delta["tool_calls"])
    return text


@dataclass
class _Event:
    kind: str  # "token", "role" (chat's role-only first chunk), "none" (no choices, e.g. usage), "done", "error"
    text: str = ""
    usage: dict[str, Any] | None = None
    error: str = ""


def classify_event(data: bytes) -> _Event:
    """One event's meaning. Every event with choices is one generated token (vLLM sends one
    per engine step; its text can be empty while a multi-byte character is incomplete, and
    EOS has none), except chat's role-only chunk."""
    if data.strip() == b"[DONE]":
        return _Event("done")
    try:
        obj = json.loads(data)
    except ValueError:
        return _Event("error", error=f"not JSON: {data[:120]!r}")
    if not isinstance(obj, dict):
        return _Event("error", error=f"not a JSON object: {data[:120]!r}")
    if obj.get("error") is not None:
        err = obj["error"]
        message = err.get("message", err) if isinstance(err, dict) else err
        return _Event("error", error=str(message)[:300])
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
    choices = obj.get("choices")
    if not choices:
        return _Event("none", usage=usage)
    choice = choices[0] if isinstance(choices, list) else None
    if not isinstance(choice, dict):
        return _Event("error", error=f"malformed choices: {data[:120]!r}")
    text = _choice_text(choice)
    delta = choice.get("delta")
    if isinstance(delta, dict) and "role" in delta and not text and choice.get("finish_reason") is None:
        return _Event("role", usage=usage)
    return _Event("token", text=text, usage=usage)


class StreamAccounting:
    """Counts token events per network block of an SSE stream, and checks that each is well formed.

    Events before the first token event are parsed, so that chat's role-only chunk does not
    count as a first token. After it, every event is counted as a token until `finish`,
    which parses the events from the stream's end back to the last token event, that one
    included, and takes back the trailing non-token ones (usage, [DONE]); comments are no
    tokens. The events in between are checked by their first bytes: one that opens as the
    first token event did (`data: {`) passes unread, which one byte count per block finds;
    only the rare others ([DONE], comments, garbage) are looked at whole. A malformed event
    found anywhere makes `finish` report an error that quotes it.
    """

    __slots__ = ("times", "tokens", "_head", "_sep", "_lead", "_mark", "_rest", "_open", "_malformed",
                 "_length", "_blocks", "_started")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self._head = b""
        self._sep = b"\n\n"
        self._lead = b"data: {"  # how the first token event opens; `_mark` is it after a separator
        self._mark = b"\n\ndata: {"
        # The stream after its last separator: all of it while that event is unchecked
        # (`_open`), else only its last bytes, which may begin a separator.
        self._rest = b""
        self._open = False
        self._malformed = ""
        self._length = 0
        self._blocks: list[bytes] = []
        self._started = False

    def feed(self, block: bytes, t: float) -> None:
        self._blocks.append(block)
        self._length += len(block)
        first = 0
        if not self._started:
            after = self._read_head(block)
            if after is None:
                return
            block, first = after, 1
        sep, lead = self._sep, self._lead
        buf = self._rest + block if self._rest else block
        n = buf.count(sep)
        led_after_sep = buf.count(self._mark) if n else 0
        if self._open and led_after_sep == n - 1 and buf.startswith(lead) and buf.endswith(sep):
            self._rest = b""  # the usual block: whole events, each opening with the lead
        else:
            n -= self._check(buf, n, led_after_sep)
        n += first
        if n:
            self.times.append(t)
            self.tokens.append(n)

    def _read_head(self, block: bytes) -> bytes | None:
        """Parse the events before the first token; once it has come, the bytes after it."""
        head = self._head + block if self._head else block
        if self._sep not in head and b"\r\n\r\n" in head:
            self._sep = b"\r\n\r\n"
        sep, start = self._sep, 0
        while (end := head.find(sep, start)) >= 0:
            event, start = head[start:end], end + len(sep)
            data = _event_data(event)
            if not _well_formed(event, data):
                self._reject(f"malformed event: {event[:120]!r}")
            elif data is not None:
                parsed = classify_event(data)
                if parsed.kind == "error":
                    self._reject(parsed.error)
                elif parsed.kind == "token":
                    self._started, self._head, self._open = True, b"", True
                    self._lead = b"data:{" if event.startswith(b"data:{") else b"data: {"
                    self._mark = sep + self._lead
                    return head[start:]
        self._head = head[start:]
        return None

    def _check(self, buf: bytes, n: int, led_after_sep: int) -> int:
        """Check the events ended in a block that is not the usual one. `buf` is `_rest` and the
        block; it holds `n` separators, `led_after_sep` of them followed by the lead. Walks back
        from the last event to each one that does not open with the lead (they are rare, and
        usually last: [DONE]), keeps in `_rest` what the next block needs, and returns how
        many of the events were comments, which are no tokens."""
        sep, lead, fresh = self._sep, self._lead, self._open
        last = buf.rfind(sep)
        tail = buf[last + len(sep):] if n else buf
        led = tail.startswith(lead)
        # The ended events to check (the first was checked at its start unless fresh), less
        # those that open with the lead.
        unchecked = n - (not fresh) - led_after_sep + led - (fresh and buf.startswith(lead)) if n else 0
        comments, end = 0, last
        while unchecked and end >= 0:
            start = buf.rfind(sep, 0, end)
            event = buf[start + len(sep) if start >= 0 else 0:end]
            if not event.startswith(lead):
                unchecked -= 1
                data = _event_data(event)
                if not _well_formed(event, data):
                    self._reject(f"malformed event: {event[:120]!r}")
                elif data is None:
                    comments += 1  # a keep-alive, say
            end = start
        self._open = (n > 0 or fresh) and not led
        self._rest = tail if self._open else tail[1 - len(sep):]
        return comments

    def _reject(self, error: str) -> None:
        self._malformed = self._malformed or error

    def events(self, data: bytes) -> list[_Event]:
        out = []
        for raw in data.split(self._sep):
            payload = _event_data(raw)
            if payload is not None:
                out.append(classify_event(payload))
        return out

    def _tail(self, size: int) -> bytes:
        """The stream's last `size` bytes (all of it, if shorter), joined once."""
        tail, length = [], 0
        for block in reversed(self._blocks):
            tail.append(block)
            length += len(block)
            if length >= size:
                break
        return b"".join(reversed(tail))[-size:]

    def _events_from_end(self) -> Iterator[bytes]:
        """The stream's ended events, last first, each without its separator. The walk starts
        in the last _TAIL_BYTES and widens to the whole stream if an event reaches past them."""
        sep = self._sep
        buf = self._tail(_TAIL_BYTES)
        end = buf.rfind(sep)
        while end >= 0:
            prev = buf.rfind(sep, 0, end)
            if prev < 0 and len(buf) < self._length:  # the event may begin before the tail
                widened = self._tail(self._length)
                buf, end = widened, end + len(widened) - len(buf)
                continue
            yield buf[prev + len(sep) if prev >= 0 else 0:end]
            end = prev

    def finish(self) -> "StreamOutcome":
        """Parse the stream's events from its end back to the last token event, that one
        included, and take the non-token ones back out of the counts."""
        usage, errors, done, trailing = None, [], False, 0
        for event in self._events_from_end():
            data = _event_data(event)
            if not _well_formed(event, data):
                self._reject(f"malformed event: {event[:120]!r}")
                trailing += 1  # `_check` counted it
                continue
            if data is None:
                continue  # a comment, which `_check` did not count
            parsed = classify_event(data)
            usage = usage or parsed.usage
            if parsed.kind == "token":
                break
            trailing += 1
            done = done or parsed.kind == "done"
            if parsed.kind == "error":
                errors.append(parsed.error)
        while trailing and self._started and self.tokens:
            take = min(trailing, self.tokens[-1])
            self.tokens[-1] -= take
            trailing -= take
            if self.tokens[-1] == 0:
                self.tokens.pop()
                self.times.pop()
        if self._malformed and self._malformed not in errors:  # it comes first; errors are in reverse
            errors.append(self._malformed)
        return StreamOutcome(usage=usage, error="; ".join(reversed(errors)), done=done)

    def text(self) -> str:
        """All generated text; parses every event, so only used when usage is missing."""
        return "".join(e.text for e in self.events(b"".join(self._blocks)) if e.kind == "token")


@dataclass(frozen=True)
class StreamOutcome:
    usage: dict[str, Any] | None
    error: str
    done: bool


# --- the backend: one request ------------------------------------------------------------


TokenCounter = Callable[[str], int]


async def send_request(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    api: ApiConfig,
    rec: RequestRecord,
    count_tokens: TokenCounter | None = None,
    expect_tokens: bool = True,
) -> None:
    """Send one request and fill `rec` in; never raises for a failed request. A stream without
    a token fails when `expect_tokens` (max_tokens > 0)."""
    headers = {"Content-Type": "application/json"}
    if api.api_key:
        headers["Authorization"] = f"Bearer {api.api_key}"
    rec.sent = clock()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                text = await resp.text()
                rec.status, rec.error = HTTP_ERROR, f"HTTP {resp.status}: {text[:300]}"
                return
            if api.stream:
                acc = StreamAccounting()
                async for block in resp.content.iter_any():
                    acc.feed(block, clock())
                rec.end = clock()
                outcome = acc.finish()
                rec.chunk_times, rec.chunk_tokens = acc.times, acc.tokens
                rec.streamed_tokens = sum(acc.tokens)
                rec.first_token = acc.times[0] if acc.times else None
                usage, text_of = outcome.usage, acc.text
                if outcome.error:
                    rec.status, rec.error = STREAM_ERROR, outcome.error
                elif not outcome.done:
                    rec.status, rec.error = STREAM_ERROR, "stream ended without [DONE]"
                elif expect_tokens and not acc.tokens:
                    rec.status, rec.error = STREAM_ERROR, "the stream carried no tokens"
            else:
                answer = classify_event(await resp.read())  # the whole answer, read as one event
                rec.end = clock()
                if answer.kind == "error":
                    rec.status, rec.error = BAD_RESPONSE, answer.error
                elif answer.kind not in ("token", "role"):
                    rec.status, rec.error = BAD_RESPONSE, "no choices in the response"
                usage, text = answer.usage, answer.text
                rec.first_token = rec.end if text else None
                rec.chunk_times, rec.chunk_tokens = ([rec.end], [1]) if text else ([], [])
                text_of = lambda: text  # noqa: E731
            if usage is not None:
                rec.usage_reported = True
                rec.input_tokens = usage.get("prompt_tokens", rec.input_tokens)
                rec.output_tokens = usage.get("completion_tokens")
            elif count_tokens is not None:
                rec.output_tokens = count_tokens(text_of())
    except asyncio.TimeoutError:
        rec.status, rec.error = TIMEOUT, f"no complete answer within {api.timeout_s:g} s"
    except (aiohttp.ClientError, OSError) as err:
        if isinstance(err, OSError) and err.errno in _OUT_OF_FILES:  # aiohttp's connect errors are OSErrors
            rec.status = CLIENT_ERROR
        elif isinstance(err, aiohttp.ClientError):
            rec.status = CONNECTION_ERROR
        else:
            raise
        rec.error = f"{type(err).__name__}: {err}"[:300]
    finally:
        if rec.end is None:
            rec.end = clock()


# --- the scheduler -----------------------------------------------------------------------


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


def new_session(api: ApiConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, force_close=False)
    timeout = aiohttp.ClientTimeout(total=api.timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=_READ_BUFFER)


class _GcPause:
    """The collector is one per process, so windows that overlap (loads run side by side in
    threads of one process) share one pause: the first window in freezes and disables it,
    the last one out restores it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._was_enabled = True

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._open == 0:
                self._was_enabled = gc.isenabled()
                gc.collect()
                gc.freeze()
                gc.disable()
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if self._open == 0:
                    gc.unfreeze()
                    if self._was_enabled:
                        gc.enable()


paused_gc = _GcPause()
"""No garbage-collector pauses inside the measured window.

A full collection over the prepared requests takes tens of milliseconds and stalls every
request in flight, which shows up as client-made latency. Objects alive now are frozen out
of later collections and collection is paused until the window ends."""


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
            rec.in_window = started <= scheduled <= self._common_end
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
    (see `paused_gc`) once, for the whole group. Several tenants' loads are each bounded by
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
            with paused_gc():
                cpu0, started = time.process_time(), clock()
                common_end = started + min(g.load.duration_s or math.inf for g in generators)
                late = await asyncio.gather(*(g.measure(s, started, common_end, binned_by)
                                              for g, s in zip(generators, sessions)))
                ended, cpu = clock(), time.process_time() - cpu0
        self._publish(PhaseChanged("done", clock()))
        aborted = next((g.aborted for g in generators if g.aborted), "")
        return LoadResult(self.records, started, ended, cpu, aborted, sum(late))
