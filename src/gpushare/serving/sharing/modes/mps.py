"""mps: the servers are clients of one MPS daemon (serving/mps.py), optionally capped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import SHARING_MODES, SharingMode

if TYPE_CHECKING:
    from ....config import SharingConfig


@SHARING_MODES.register("mps")
class Mps(SharingMode):
    caps = True

    @classmethod
    def uses_mps(cls, sharing: SharingConfig) -> bool:
        return True
