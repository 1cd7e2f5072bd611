"""A sharing mode turned into per-server settings: which GPU (or MIG instance) a server sees,
its memory budget, and its MPS limits. Pure: the GPU's facts come in as arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError
from ..mig import Caps, MigInstance, MigProfiles, memory_fraction, profile_caps
from . import SHARING_MODES

if TYPE_CHECKING:
    from ...config import ScenarioConfig, ServerConfig


@dataclass(frozen=True)
class Placement:
    """Where one server runs and what it may use; recorded in summary.json."""

    server: ServerConfig
    """The server's config with the derived memory fraction and environment applied."""
    caps: Caps | None = None
    mig_instance: MigInstance | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "cuda_visible_devices": self.server.env.get("CUDA_VISIBLE_DEVICES"),
            "memory_cap_gib": None if self.caps is None else self.caps.memory_gib,
            "sm_percent": None if self.caps is None else self.caps.sm_percent,
            "gpu_memory_utilization": self.server.gpu_memory_utilization,
            "mig_instance": None if self.mig_instance is None else self.mig_instance.name,
        }


def mps_memory_limit(gib: float) -> str:
    """CUDA_MPS_PINNED_DEVICE_MEM_LIMIT for the first visible device: `0=36G`, or in MiB."""
    return f"0={int(gib)}G" if float(gib).is_integer() else f"0={round(gib * 1024)}M"


def server_caps(server: ServerConfig, gpu_memory_gib: float | None, key: str,
                profiles: MigProfiles | None = None) -> Caps | None:
    if not server.capped:
        return None
    if gpu_memory_gib is None and (server.mig_profile is not None or server.memory_gib is not None):
        raise ConfigError(f"{key}: a memory cap needs the GPU's memory size, and NVML is not available")
    if server.mig_profile is not None:
        assert gpu_memory_gib is not None
        return profile_caps(server.mig_profile, gpu_memory_gib, profiles, f"{key}.mig_profile")
    return Caps(memory_gib=server.memory_gib, sm_percent=server.sm_percent)


def place_servers(config: ScenarioConfig, gpu_memory_gib: float | None,
                  mig: list[MigInstance] | None = None, profiles: MigProfiles | None = None) -> list[Placement]:
    """Each launched server's settings under the scenario's sharing mode. `profiles` are the
    GPU's MIG profiles (mig.gpu_profiles); without them `mig_profile` takes an 80 GB H100's names."""
    sharing = config.sharing
    mode = SHARING_MODES[sharing.mode]
    out = []
    for i, server in enumerate(config.servers):
        if server.engine == "external":
            out.append(Placement(server))
            continue
        env = dict(server.env)
        update: dict[str, Any] = {}
        # gpu_memory_gib is None on a machine without a GPU (CPU engines).
        device, instance = mode.visible_device(i, server, sharing, gpu_memory_gib is not None, mig)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        caps = server_caps(server, gpu_memory_gib, f"servers.{i}", profiles)
        if caps is not None and caps.memory_gib is not None:
            assert gpu_memory_gib is not None
            update["gpu_memory_utilization"] = memory_fraction(caps.memory_gib, gpu_memory_gib, sharing.memory_headroom_gib)
            if sharing.uses_mps:
                # Device 0 is the first visible device, the one CUDA_VISIBLE_DEVICES names.
                env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = mps_memory_limit(caps.memory_gib)
        if caps is not None and caps.sm_percent is not None:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(caps.sm_percent)
        update["env"] = env
        out.append(Placement(server.model_copy(update=update), caps, instance))
    return out
