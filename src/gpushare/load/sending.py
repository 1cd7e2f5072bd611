"""Sending one request to an OpenAI-compatible server: its body, the HTTP exchange, and the
record of what happened (never an exception for a failed request)."""

from __future__ import annotations

import asyncio
import errno
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from ..config import ApiConfig
from ..core.records import RequestRecord, RequestSpec
from .stream import StreamAccounting, classify_event

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

_READ_BUFFER = 4 * 1024 * 1024


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


def new_session(api: ApiConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, force_close=False)
    timeout = aiohttp.ClientTimeout(total=api.timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=_READ_BUFFER)
