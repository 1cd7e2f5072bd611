"""A protocol-faithful OpenAI test server for the load generator's own tests.

It streams events in vLLM's format with controlled timings, so tests can check what the
client measures against what the server did, and serves vLLM's gauges of the requests it
holds at /metrics (no counters), so a matrix drains it between cells as it drains vLLM. It is
a test fixture, never the product's end-to-end path (those tests start real vLLM). Run as a
script it takes vLLM-style flags (only --host and --port matter), so the process tests can
launch it as a server command:
    python tests/sse_server.py --host 127.0.0.1 --port 8123 [--child-ignoring-sigterm] [--record-bodies FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from aiohttp import web


@dataclass
class Behaviour:
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    events_per_write: int = 1
    usage: bool = True
    status: int = 200
    fail_after: int | None = None
    """Send an error event after this many tokens (vLLM's mid-stream error shape)."""
    drop_after: int | None = None
    """Close the connection after this many tokens, without [DONE]."""
    empty_last_token: bool = False
    """The last token's event carries no text (vLLM does this for EOS)."""
    reported_tokens: int | None = None
    """Usage reports this many completion tokens, whatever was sent (None: as many as were sent)."""


def _completion_event(text: str, finish: str | None = None) -> dict:
    return {"id": "cmpl-test", "object": "text_completion", "created": 1, "model": "test",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}]}


def _chat_event(delta: dict, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": "test",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def sse(obj: dict | str) -> bytes:
    return b"data: " + (obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n\n"


def prompt_tokens(body: dict) -> int:
    """A stand-in prompt length (words), enough for usage to be plausible."""
    return len(str(body.get("prompt") or body.get("messages")).split())


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def stream_head(chat: bool) -> bytes:
    """What vLLM sends before the first token: chat's role-only chunk; completions send nothing."""
    return sse(_chat_event({"role": "assistant", "content": ""})) if chat else b""


def token_event(chat: bool, text: str, finish: str | None = None) -> bytes:
    """One generated token, as vLLM streams it on either endpoint."""
    return sse(_chat_event({"content": text}, finish) if chat else _completion_event(text, finish))


def stream_tail(body: dict, counts: dict | None) -> bytes:
    """The usage chunk (only when the request asked for it, as vLLM does), then [DONE]."""
    tail = b""
    if counts is not None and (body.get("stream_options") or {}).get("include_usage"):
        tail += sse({"id": "x", "object": "text_completion", "created": 1, "model": "test", "choices": [],
                     "usage": counts})
    return tail + sse("[DONE]")


async def models(request: web.Request) -> web.Response:
    """What a readiness check asks for."""
    return web.json_response({"object": "list", "data": [{"id": "test", "object": "model"}]})


class SseServer:
    def __init__(self, behaviour: Behaviour | None = None, record: str | None = None):
        self.behaviour = behaviour or Behaviour()
        self.requests: list[dict] = []
        self.record = record
        """A file that gets every request body, one JSON line each (what a server process received)."""
        self.app = web.Application()
        self.app.router.add_get("/v1/models", models)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_get("/metrics", self.metrics)
        self.held = 0
        """Requests being answered now (vLLM's num_requests_running; none ever wait)."""

    async def metrics(self, request: web.Request) -> web.Response:
        """vLLM's gauges of the requests it holds, which a matrix reads to drain between cells."""
        return web.Response(text=f'vllm:num_requests_running{{model_name="test"}} {self.held}.0\n'
                                 f'vllm:num_requests_waiting{{model_name="test"}} 0.0\n')

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def _answer(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self.held += 1
        try:
            return await self._stream(request, chat)
        finally:
            self.held -= 1

    async def _stream(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.record is not None:
            with open(self.record, "a") as f:
                f.write(json.dumps(body) + "\n")
        b = self.behaviour
        if b.status != 200:
            return web.json_response({"error": {"message": "test failure", "code": b.status}}, status=b.status)
        n = int(body["max_tokens"])
        prompt = prompt_tokens(body)
        reported = n if b.reported_tokens is None else b.reported_tokens
        if not body.get("stream"):
            await asyncio.sleep(b.first_token_delay + b.token_delay * max(0, n - 1))
            text = " tok" * n
            choice = {"index": 0, "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            payload = {"id": "x", "object": "chat.completion" if chat else "text_completion", "choices": [choice]}
            if b.usage:
                payload["usage"] = usage(prompt, reported)
            return web.json_response(payload)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        pending = stream_head(chat)
        await asyncio.sleep(b.first_token_delay)
        for i in range(n):
            if b.fail_after is not None and i == b.fail_after:
                await resp.write(pending + sse({"error": {"message": "engine failed", "code": 500}}))
                return resp
            if b.drop_after is not None and i == b.drop_after:
                await resp.write(pending)
                request.transport.close()
                return resp
            last = i == n - 1
            finish = "length" if last else None
            text = "" if last and b.empty_last_token else " tok"
            pending += token_event(chat, text, finish)
            if (i + 1) % b.events_per_write == 0 or i == n - 1:
                await resp.write(pending)
                pending = b""
                if i < n - 1 and b.token_delay:
                    await asyncio.sleep(b.token_delay)
        await resp.write(stream_tail(body, usage(prompt, reported) if b.usage else None))
        await resp.write_eof()
        return resp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--child-ignoring-sigterm", action="store_true",
                        help="also start a worker that ignores SIGTERM, like a wedged engine process")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds before it listens, like a loading engine")
    parser.add_argument("--ignore-sigterm", action="store_true", help="the server itself ignores SIGTERM")
    parser.add_argument("--record-bodies", default=None, help="append every request body to this file (JSON lines)")
    args, _ = parser.parse_known_args()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.child_ignoring_sigterm:
        child = subprocess.Popen([sys.executable, "-c",
                                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        print(f"child pid {child.pid}", flush=True)
    print(f"server pid {os.getpid()}", flush=True)
    time.sleep(args.startup_delay)
    # aiohttp would install its own SIGTERM handler over the ignored one.
    web.run_app(SseServer(Behaviour(token_delay=args.token_delay), args.record_bodies).app, host=args.host,
                port=args.port, print=None, handle_signals=not args.ignore_sigterm)


if __name__ == "__main__":
    main()
