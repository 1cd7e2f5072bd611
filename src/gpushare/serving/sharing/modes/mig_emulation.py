"""mig_emulation: MIG-like caps without MIG: a memory cap per server and, under MPS
(`sharing.mps: true`), a compute cap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import SHARING_MODES, SharingMode

if TYPE_CHECKING:
    from ....config import ServerConfig, SharingConfig


@SHARING_MODES.register("mig_emulation")
class MigEmulation(SharingMode):
    caps = True
    compute_cap_advice = " (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE); set sharing.mps: true"

    @classmethod
    def uses_mps(cls, sharing: SharingConfig) -> bool:
        return sharing.mps

    @classmethod
    def check_server(cls, i: int, server: ServerConfig, sharing: SharingConfig) -> None:
        if server.memory_gib is None and server.mig_profile is None:
            raise ValueError(f"servers.{i}: mig_emulation needs a memory cap (memory_gib or mig_profile)")
        super().check_server(i, server, sharing)
