"""Sharing modes: how a scenario's servers share the GPU. Each mode is one registered class in a
module of `modes/` named after it; what it decides is turned into per-server settings by
`placement`.

| mode          | servers | what gpushare sets                                                   |
|---------------|---------|----------------------------------------------------------------------|
| baseline      | 1       | CUDA_VISIBLE_DEVICES                                                 |
| timeslice     | 1+      | CUDA_VISIBLE_DEVICES; no MPS: the GPU's default time-slicing         |
| mps           | 1+      | an MPS daemon for the run; optional caps as below                    |
| mig_emulation | 1+      | a memory cap per server (engine fraction; under MPS also the pinned  |
|               |         | memory limit) and, under MPS, a compute cap (active thread percent)  |
| mig           | 1+      | CUDA_VISIBLE_DEVICES=MIG-<uuid>, one existing instance per server    |

MIG-like emulation is not hardware isolation: servers share the SMs' caches, the memory
bandwidth and one fault domain, and the memory cap is the engine's own budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

from ...registry import Registry, import_modules
from ..mig import MigInstance

if TYPE_CHECKING:
    from ...config import ServerConfig, SharingConfig


class SharingMode:
    """One `sharing.mode`: what its servers may ask for, whether they run under MPS, what must
    be found on the machine first and which device each server sees. Stateless; a subclass
    registers under the mode's name (`@SHARING_MODES.register("mps")`) in a module of `modes/`."""

    caps: ClassVar[bool] = False
    """Whether a server may have caps (memory_gib, sm_percent, mig_profile)."""
    mig_device: ClassVar[bool] = False
    """Whether a server may name its MIG instance (mig_device)."""
    compute_cap_advice: ClassVar[str] = ""
    """Said after "a compute cap needs MPS" where the mode can run its servers under MPS."""

    @classmethod
    def uses_mps(cls, sharing: SharingConfig) -> bool:
        """Whether the servers run under an MPS daemon."""
        return False

    @classmethod
    def check_servers(cls, servers: Sequence[ServerConfig], sharing: SharingConfig) -> None:
        """Raise ValueError, naming the key, where the scenario asks what this mode cannot give."""
        for i, server in enumerate(servers):
            cls.check_server(i, server, sharing)
        if sharing.mps_pipe_directory is not None and not cls.uses_mps(sharing):
            raise ValueError("sharing.mps_pipe_directory: only when the servers run under MPS")

    @classmethod
    def check_server(cls, i: int, server: ServerConfig, sharing: SharingConfig) -> None:
        if server.capped and not cls.caps:
            raise ValueError(f"servers.{i}: memory_gib, sm_percent and mig_profile need mode {modes_with('caps')}")
        if (server.sm_percent is not None or server.mig_profile is not None) and not cls.uses_mps(sharing):
            raise ValueError(f"servers.{i}: a compute cap needs MPS{cls.compute_cap_advice}")
        if server.mig_device is not None and not cls.mig_device:
            raise ValueError(f"servers.{i}.mig_device: only for sharing.mode {modes_with('mig_device')}")

    @classmethod
    def preflight(cls, sharing: SharingConfig) -> list[MigInstance] | None:
        """What must exist on the machine before the servers are placed: the MIG instances
        they are given, or None where the mode gives none."""
        return None

    @classmethod
    def visible_device(cls, i: int, server: ServerConfig, sharing: SharingConfig, on_gpu: bool,
                       instances: list[MigInstance] | None) -> tuple[str | None, MigInstance | None]:
        """What CUDA_VISIBLE_DEVICES names for server `i` (None: nothing, on a machine without
        a GPU), and the MIG instance that is, if it is one."""
        return (str(sharing.gpu) if on_gpu else None), None


SHARING_MODES: Registry[SharingMode] = Registry("mode")


def modes_with(flag: str) -> str:
    """The modes whose class sets `flag`, as an error names them: `mps or mig_emulation`."""
    return " or ".join(name for name in SHARING_MODES.names if getattr(SHARING_MODES[name], flag))


import_modules(f"{__name__}.modes", first=("baseline", "mps", "timeslice", "mig_emulation", "mig"))
