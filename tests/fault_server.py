"""A misbehaving OpenAI-compatible server, for the load generator's failure handling.

Each server misbehaves in one mode, the same way on every completion request, streamed or
not (the mode says what it sends, whatever was asked); GET /v1/models and /health answer
200, so readiness checks pass. Run as a script it takes vLLM-style flags (only --host and
--port matter) plus --mode, so process tests can launch it as a server command:
    python tests/fault_server.py --host 127.0.0.1 --port 8123 --mode garbage_middle
"""

from __future__ import annotations

import argparse
import asyncio
import os

from aiohttp import web

from sse_server import SseServer, _chat_event, _completion_event, sse

MODES = {
    "http500": "answers HTTP 500 with an error body",
    "midstream_close": "streams half the tokens, then closes the connection (no [DONE])",
    "garbage_start": "streams a non-JSON event before the first token",
    "garbage_middle": "streams a non-JSON event between two tokens",
    "garbage_only": "streams non-JSON events and no token, then [DONE]",
    "broken_last_token": "streams a last token event that opens as JSON but is broken inside",
    "no_tokens": "streams usage and [DONE] but no token",
    "non_json_body": "answers 200 with a body that is not JSON (an HTML page)",
    "list_body": "answers 200 with a JSON list",
    "string_body": "answers 200 with a JSON string",
    "no_choices": "answers 200 with a JSON object that has no choices",
    "hang": "accepts the request and never answers (until the server shuts down)",
    "slow_tokens": "streams valid tokens with a long gap (--token-gap) between them",
}
GARBAGE = b"data: this is not JSON\n\n"
BROKEN = b'data: {"choices": [{"text": " tok"\n\n'
BODIES = {
    "non_json_body": (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    "list_body": (b'[{"text": " tok"}]', "application/json"),
    "string_body": (b'"ok"', "application/json"),
    "no_choices": (b'{"id": "cmpl-x", "object": "text_completion", "model": "test"}', "application/json"),
}


class FaultServer(SseServer):
    """The SSE test server's routes, plus /health, answering every completion in one bad way."""

    def __init__(self, mode: str, token_gap: float = 0.5):
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; modes: {', '.join(MODES)}")
        super().__init__()
        self.mode = mode
        self.token_gap = token_gap
        self._closing = asyncio.Event()
        self.app.router.add_get("/health", self.health)
        self.app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, app: web.Application) -> None:
        self._closing.set()  # lets hanging handlers end, so that shutdown does not wait for them

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _answer(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "http500":
            return web.json_response({"object": "error", "message": "internal server error", "code": 500}, status=500)
        if self.mode == "hang":
            await self._closing.wait()
            raise web.HTTPServiceUnavailable()
        if self.mode in BODIES:
            text, content_type = BODIES[self.mode]
            return web.Response(body=text, content_type=content_type)
        return await self._stream(request, int(body["max_tokens"]), chat)

    async def _stream(self, request: web.Request, n: int, chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if chat:
            await resp.write(sse(_chat_event({"role": "assistant", "content": ""})))
        tokens = [sse(_chat_event({"content": " tok"}, "length" if i == n - 1 else None) if chat
                      else _completion_event(" tok", "length" if i == n - 1 else None)) for i in range(n)]
        events = {
            "midstream_close": tokens[: n // 2],
            "garbage_start": [GARBAGE, *tokens],
            "garbage_middle": [*tokens[: n // 2], GARBAGE, *tokens[n // 2:]],
            "garbage_only": [GARBAGE, GARBAGE],
            "broken_last_token": [*tokens[:-1], BROKEN],
            "no_tokens": [],
            "slow_tokens": tokens,
        }[self.mode]
        for i, event in enumerate(events):
            if i and self.mode == "slow_tokens":
                await asyncio.sleep(self.token_gap)
            await resp.write(event)
        if self.mode == "midstream_close":
            request.transport.close()
            return resp
        sent = sum(event not in (GARBAGE, BROKEN) for event in events)
        usage = {"prompt_tokens": 3, "completion_tokens": sent, "total_tokens": 3 + sent}
        await resp.write(sse({"id": "x", "object": "text_completion", "choices": [], "usage": usage}) + sse("[DONE]"))
        await resp.write_eof()
        return resp


def main() -> None:
    parser = argparse.ArgumentParser(epilog="modes: " + "; ".join(f"{k}: {v}" for k, v in MODES.items()))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=list(MODES), required=True)
    parser.add_argument("--token-gap", type=float, default=0.5, help="seconds between tokens in slow_tokens")
    args, _ = parser.parse_known_args()
    print(f"server pid {os.getpid()}", flush=True)
    web.run_app(FaultServer(args.mode, args.token_gap).app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
