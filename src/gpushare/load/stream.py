"""Stream accounting, pure: a server-sent event stream's bytes and arrival times in, token
counts per network block, usage and errors out.

Each block is time-stamped once and its events are counted and checked with byte searches;
only the first events (to find the first token) and the last ones (the last token, usage,
errors, [DONE]) are parsed as JSON. That keeps the client's own cost per request small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

_TAIL_BYTES = 8192
# How the lines of a server-sent event begin: a comment, or one of its fields.
_SSE_LINES = (b":", b"data:", b"event:", b"id:", b"retry:")


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
