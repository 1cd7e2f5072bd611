"""An OpenAI test server whose latency follows a stated law, so a capacity search has a known answer.

The law: every token interval of a request, the time to its first token included, is

    d0 × (1 + a × (other requests in flight on the same port) + b × (requests in flight on the group's other ports))

re-evaluated at each token from the counts at that moment. A request is in flight from its arrival until its
last token is sent. Each request streams exactly max_tokens tokens (ignore_eos, as vLLM with it), in vLLM's
event format (sse_server's formatter) with usage in the final chunk when stream_options.include_usage asks.
Closed loop at concurrency c beside n requests held on other ports settles at TPOT = token_interval(d0, a, b,
c - 1, n); capacity_in_concurrency inverts that.

Two ways to run it, vLLM-style flags it does not know accepted and ignored (so it can be a server command):
    python tests/law_server.py --ports 8001,8002 --d0 0.02 --a 0.5 --b 0.25              # one process, shared memory
    python tests/law_server.py --port 8001 --group DIR --d0 0.02 --a 0.5 --b 0.25        # one per port, DIR shared
In the second, each instance keeps its in-flight count in DIR/<port> (replaced atomically, removed when it stops)
and reads the other instances' files at each token. Only streaming requests (gpushare's default) are answered.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
from contextlib import suppress
from pathlib import Path
from typing import Protocol

from aiohttp import web

from sse_server import models, prompt_tokens, stream_head, stream_tail, token_event, usage


def token_interval(d0: float, a: float, b: float, same_port_others: int, other_ports: int) -> float:
    """The law: the wait before a request's next token, given what else is in flight."""
    return d0 * (1 + a * same_port_others + b * other_ports)


def capacity_in_concurrency(d0: float, a: float, b: float, tpot_bound: float, neighbour_in_flight: int) -> int:
    """The highest closed-loop concurrency on one port whose steady TPOT stays within `tpot_bound` while
    `neighbour_in_flight` requests are held on the group's other ports (0: not even concurrency 1 fits).
    Decided by token_interval itself, so a bound equal to a concurrency's interval admits it exactly."""
    def fits(c: int) -> bool:
        return token_interval(d0, a, b, c - 1, neighbour_in_flight) <= tpot_bound

    if not fits(1):
        return 0
    if a <= 0:
        raise ValueError("with a <= 0 the interval does not grow with concurrency: no highest concurrency")
    c = max(1, math.floor((tpot_bound / d0 - 1 - b * neighbour_in_flight) / a) + 1)
    while not fits(c):
        c -= 1
    while fits(c + 1):
        c += 1
    return c


class Counts(Protocol):
    def add(self, port: int, delta: int) -> None: ...

    def in_flight(self, port: int) -> tuple[int, int]:
        """(requests in flight on `port`, on the group's other ports together)."""
        ...

    def close(self) -> None: ...


class SharedCounts:
    """One process serving every port of the group: the counts live in its memory."""

    def __init__(self, ports: list[int]):
        self.by_port = dict.fromkeys(ports, 0)

    def add(self, port: int, delta: int) -> None:
        self.by_port[port] += delta

    def in_flight(self, port: int) -> tuple[int, int]:
        mine = self.by_port[port]
        return mine, sum(self.by_port.values()) - mine

    def close(self) -> None:
        pass


class DirectoryCounts:
    """One instance per port, so that gpushare can launch each as its own server: the group is a
    directory holding one file per member, DIR/<port>, whose text is that member's count."""

    def __init__(self, directory: Path, port: int):
        self.directory, self.port, self.mine = directory, port, 0
        directory.mkdir(parents=True, exist_ok=True)
        self._write()

    def add(self, port: int, delta: int) -> None:
        self.mine += delta
        self._write()

    def in_flight(self, port: int) -> tuple[int, int]:
        others = 0
        for path in self.directory.iterdir():
            if path.name.isdigit() and int(path.name) != self.port:
                with suppress(FileNotFoundError):  # a member that just stopped
                    others += int(path.read_text())
        return self.mine, others

    def _write(self) -> None:
        # A reader sees the old count or the new one, never a half-written file.
        tmp = self.directory / f".{self.port}.tmp"
        tmp.write_text(str(self.mine))
        os.replace(tmp, self.directory / str(self.port))

    def close(self) -> None:
        """A stopped member holds nothing: its file goes, so it adds no phantom load."""
        (self.directory / str(self.port)).unlink(missing_ok=True)


class LawServer:
    """The endpoints gpushare's run reads: /v1/models (readiness), the two streaming endpoints, and
    /metrics with vLLM's queue gauges (a matrix drains between cells until they read 0)."""

    def __init__(self, d0: float, a: float, b: float, counts: Counts):
        self.d0, self.a, self.b, self.counts = d0, a, b, counts
        self.app = web.Application()
        self.app.router.add_get("/v1/models", models)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.on_cleanup.append(self._close)

    async def _close(self, app: web.Application) -> None:
        self.counts.close()

    @staticmethod
    def port(request: web.Request) -> int:
        """The port the request came in on: one process may listen on several."""
        return int(request.transport.get_extra_info("sockname")[1])

    async def metrics(self, request: web.Request) -> web.Response:
        running, _ = self.counts.in_flight(self.port(request))
        return web.Response(text=f"vllm:num_requests_running {running}\nvllm:num_requests_waiting 0\n")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def _answer(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"error": {"message": "this server only streams", "code": 400}}, status=400)
        n, port = int(body["max_tokens"]), self.port(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        self.counts.add(port, 1)
        try:
            await resp.prepare(request)
            await resp.write(stream_head(chat))
            loop = asyncio.get_running_loop()
            due = loop.time()
            for i in range(n):
                mine, others = self.counts.in_flight(port)
                # Deadlines end to end: a late wake-up shortens the next wait instead of adding to the total.
                due += token_interval(self.d0, self.a, self.b, mine - 1, others)
                await asyncio.sleep(max(0.0, due - loop.time()))
                await resp.write(token_event(chat, " tok", "length" if i == n - 1 else None))
        finally:
            self.counts.add(port, -1)
        await resp.write(stream_tail(body, usage(prompt_tokens(body), n)))
        await resp.write_eof()
        return resp


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)  # no vLLM flag may pass for an abbreviation of ours
    parser.add_argument("--host", default="127.0.0.1")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--ports", help="comma-separated: one process serves them all, one group")
    where.add_argument("--port", type=int, help="this instance's port (with --group: one member of it)")
    parser.add_argument("--group", type=Path, help="directory the group's instances share (with --port)")
    parser.add_argument("--d0", type=float, required=True, help="seconds per token with nothing else in flight")
    parser.add_argument("--a", type=float, default=0.0, help="added share of d0 per other request on this port")
    parser.add_argument("--b", type=float, default=0.0, help="added share of d0 per request on the other ports")
    args, _ = parser.parse_known_args()
    if args.group is not None and args.port is None:
        parser.error("--group goes with --port (one instance per port)")
    ports = [args.port] if args.port is not None else [int(p) for p in args.ports.split(",")]
    counts: Counts = DirectoryCounts(args.group, args.port) if args.group else SharedCounts(ports)
    print(f"server pid {os.getpid()}", flush=True)
    sockets = [socket.create_server((args.host, p)) for p in ports]
    web.run_app(LawServer(args.d0, args.a, args.b, counts).app, sock=sockets, print=None)


if __name__ == "__main__":
    main()
