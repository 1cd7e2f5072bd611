"""Engines: declarative specs of how to start an OpenAI-compatible server and know it is up.

An engine turns a `ServerConfig` into a `LaunchPlan` (command, environment, URL); the
servers module runs plans without knowing which engine made them. Each engine is one
registered class in a module of this package (vllm.py, external.py); every module here is
imported with the package, so a new engine is its file.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ...registry import Registry, import_modules

if TYPE_CHECKING:
    from ...config import ServerConfig


STOP_GRACE_S = 20.0
"""A served model's time to finish its requests and free the GPU once asked to stop (the
default of servers[].stop_grace_s, and what `doctor --clean` gives a leftover)."""


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
    stop_grace_s: float = STOP_GRACE_S
    """After SIGTERM, how long the server's group may take before it is killed (servers[].stop_grace_s)."""
    counters: dict[str, str] = field(default_factory=dict)
    """Our name -> the server's Prometheus counter at /metrics, to cross-check token counts."""
    queue_gauges: list[str] = field(default_factory=list)
    """The server's gauges of requests it holds (running, waiting): all 0 means it is idle."""
    kv_cache_pattern: str | None = None
    """A regex whose first group is the KV-cache size in tokens, found in the server's log."""


class Engine:
    """One kind of OpenAI-compatible server: whether it can start on this machine, and how to
    start (or reach) it. Stateless; a subclass registers under the name `servers[].engine`
    gives (`@ENGINES.register("vllm")`), in a module of this package of its own."""

    launched: ClassVar[bool] = True
    """Whether gpushare starts the server (and so owns its port and process)."""

    @classmethod
    def check_keys(cls, server: ServerConfig) -> None:
        """Raise ValueError where the server's config gives a key this engine does not read."""
        if server.url:
            raise ValueError("'url' is only for engine: external")

    @classmethod
    def check_installed(cls, server: ServerConfig) -> None:
        """Raise ConfigError if the server cannot be started on this machine."""

    @classmethod
    def plan(cls, name: str, server: ServerConfig, model: str, served_name: str, cache_dir: Path) -> LaunchPlan:
        raise NotImplementedError


ENGINES: Registry[Engine] = Registry("engine")


def installed_distribution(*names: str) -> tuple[str, str] | None:
    """(distribution, version) of the first of `names` that is installed."""
    for dist in names:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


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


import_modules(__name__)
