"""baseline: one server alone on the GPU, the reference the other modes are measured against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .. import SHARING_MODES, SharingMode

if TYPE_CHECKING:
    from ....config import ServerConfig, SharingConfig


@SHARING_MODES.register("baseline")
class Baseline(SharingMode):
    @classmethod
    def check_servers(cls, servers: Sequence[ServerConfig], sharing: SharingConfig) -> None:
        if len(servers) > 1:
            raise ValueError("sharing.mode: baseline runs one server; use timeslice, mps or mig_emulation for several")
        super().check_servers(servers, sharing)
