"""External: a server gpushare does not start."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import ENGINES, Engine, LaunchPlan
from .vllm import VllmEngine

if TYPE_CHECKING:
    from ...config import ServerConfig


@ENGINES.register("external")
class ExternalEngine(Engine):
    """A server someone else runs: gpushare only checks it answers and sends it load. Most
    such servers are vLLM's, so its /metrics is read for vLLM's counters (the cross-check of
    the client's token totals) and its gauges of requests held (a matrix's drain between
    cells); a server that exposes none of them has no counters, and a drain waits its limit."""

    launched = False

    @classmethod
    def check_keys(cls, server: ServerConfig) -> None:
        if not server.url:
            raise ValueError("an external server needs 'url'")

    @classmethod
    def plan(cls, name: str, server: ServerConfig, model: str, served_name: str, cache_dir: Path) -> LaunchPlan:
        assert server.url is not None
        return LaunchPlan(name, server.url.rstrip("/"), None, ready_timeout_s=min(server.ready_timeout_s, 30.0),
                          counters=dict(VllmEngine.counters), queue_gauges=list(VllmEngine.queue_gauges))
