"""Everything that can be checked before a run folder or a process exists: open files, ports,
engines, the GPU, MPS; what it resolves (models, placements, launch plans) is `Prepared`."""

from __future__ import annotations

import math
import os
import resource
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ... import environment
from ...config import ScenarioConfig
from ...core.gpus import GpuInfo
from ...errors import ConfigError
from ...serving import mig, mps
from ...serving.engines import ENGINES, LaunchPlan
from ...serving.models import ResolvedModel, cache_root, resolve_model
from ...serving.servers import ensure_port_free, free_port
from ...serving.sharing.placement import Placement, place_servers


@dataclass
class Prepared:
    """What preflight resolved: models, where each server runs, and how to launch it."""

    models: dict[int, ResolvedModel]
    placements: list[Placement]
    plans: list[LaunchPlan]
    gpu: GpuInfo


def gpu_memory_gib(gpu: GpuInfo, index: int) -> float | None:
    """The GPU's memory by NVML, or None on a machine without NVML or GPUs."""
    if not gpu.nvml or not gpu.devices:
        return None
    device = gpu.device(index)
    if device is None:
        raise ConfigError(f"sharing.gpu: there is no GPU {index} (found {len(gpu.devices)})")
    return None if device.memory_mib is None else device.memory_mib / 1024


def gpu_uuid(gpu: GpuInfo, index: int) -> str | None:
    device = gpu.device(index)
    return None if device is None else device.uuid


def with_ports(config: ScenarioConfig) -> ScenarioConfig:
    """The scenario with a free port for every launched server whose config names none."""
    taken = {s.port for s in config.servers if s.port is not None}
    servers = []
    for server in config.servers:
        if server.engine != "external" and server.port is None:
            port = free_port(server.host, taken)
            taken.add(port)
            server = server.model_copy(update={"port": port})
        servers.append(server)
    return config.model_copy(update={"servers": servers})


FILES_BESIDE_THE_LOAD = 32
"""Files a run holds open beside its requests' sockets and its servers' files (its CSV files,
the event loop's, the tokenizer's), with room to spare: a run at concurrency 1 holds 19."""
FILES_PER_SERVER = 4
"""A server's log, its pipes, and the socket of its readiness checks."""


def in_flight_bound(config: ScenarioConfig) -> int | None:
    """The most requests the load keeps in flight at once, its tenants' together; None for an
    open loop without a concurrency cap, which has no bound."""
    caps = [None if t.load.concurrency is None else min(t.load.concurrency, t.load.n_requests or t.load.concurrency)
            for t in config.resolved_tenants()]
    return None if None in caps else sum(caps)  # type: ignore[arg-type]


def ensure_open_files(configs: Sequence[ScenarioConfig]) -> None:
    """Each request in flight holds a socket: raise this process's soft open-file limit
    (RLIMIT_NOFILE, which the servers it starts inherit) to what the largest of these loads
    needs, up to the hard limit, or refuse before anything starts, rather than fail requests
    with "Too many open files". Without a bound the soft limit is raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = math.inf if hard == resource.RLIM_INFINITY else hard
    bounds = [in_flight_bound(config) for config in configs]
    if None in bounds:
        if soft != resource.RLIM_INFINITY and soft < ceiling:
            with suppress(ValueError, OSError):  # an infinite hard limit may be above the kernel's
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return
    concurrency = max(bounds, default=0)
    servers = max((len(config.servers) for config in configs), default=0)
    need = len(os.listdir("/proc/self/fd")) + FILES_BESIDE_THE_LOAD + FILES_PER_SERVER * servers + concurrency
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    if need <= ceiling:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            return
    limits = f"soft {soft}, hard {'unlimited' if ceiling == math.inf else hard}"
    raise ConfigError(
        f"load.concurrency: {concurrency} requests in flight need about {need} open files, above the open-file "
        f"limit (RLIMIT_NOFILE: {limits}); raise the hard limit (ulimit -Hn {need} as root, or LimitNOFILE / "
        f"limits.conf) or lower the concurrency")


def preflight(config: ScenarioConfig, say: Any, cells: Iterable[ScenarioConfig] = ()) -> Prepared:
    """Everything that can be checked before a folder or a process exists; `cells` are a
    matrix's cells, whose loads the check of open files covers too. Servers without a port get
    one here; the launch plans carry it."""
    ensure_open_files([config, *cells])
    config = with_ports(config)
    for i, server in enumerate(config.servers):
        ENGINES[server.engine].check_installed(server)
        if server.engine != "external":
            assert server.port is not None
            ensure_port_free(server.host, server.port, f"servers[{i}].port")
    gpu = environment.gpus()
    mig_list = config.sharing.implementation.preflight(config.sharing)
    profiles = mig.gpu_profiles(config.sharing.gpu) if any(s.mig_profile for s in config.servers) else None
    placements = place_servers(config, gpu_memory_gib(gpu, config.sharing.gpu), mig_list, profiles)
    if config.sharing.uses_mps:
        index = config.sharing.gpu
        mps.preflight(config.sharing.mps_pipe_directory, mps.gpu_names(index, gpu_uuid(gpu, index)))
    # The embedded model is prepared for external servers too: its folder holds the tokenizer.
    models = {
        i: resolve_model(server.model or config.model, config.served_model_name, say=say)
        for i, server in enumerate(config.servers)
    }
    names, cache = config.server_names(), cache_root()
    plans = [
        ENGINES[p.server.engine].plan(names[i], p.server, models[i].path, models[i].served_name, cache)
        for i, p in enumerate(placements)
    ]
    return Prepared(models, placements, plans, gpu)
