"""mig: each server gets one existing MIG instance (serving/mig.py finds them; gpushare never
creates or changes any)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ....errors import ConfigError
from ...mig import MigInstance, discover
from .. import SHARING_MODES, SharingMode

if TYPE_CHECKING:
    from ....config import ServerConfig, SharingConfig


@SHARING_MODES.register("mig")
class Mig(SharingMode):
    mig_device = True

    @classmethod
    def preflight(cls, sharing: SharingConfig) -> list[MigInstance] | None:
        return discover(sharing.gpu)

    @classmethod
    def visible_device(cls, i: int, server: ServerConfig, sharing: SharingConfig, on_gpu: bool,
                       instances: list[MigInstance] | None) -> tuple[str | None, MigInstance | None]:
        assert instances is not None
        instance = pick_instance(i, server, instances)
        return instance.uuid, instance


def pick_instance(i: int, server: ServerConfig, instances: list[MigInstance]) -> MigInstance:
    """Server `i`'s instance: the one its mig_device names, or the i-th."""
    wanted = server.mig_device
    if wanted is None:
        if i >= len(instances):
            raise ConfigError(f"servers.{i}: there are only {len(instances)} MIG instances for {i + 1} servers")
        return instances[i]
    for inst in instances:
        if wanted in (inst.uuid, str(inst.index)):
            return inst
    raise ConfigError(f"servers.{i}.mig_device: no MIG instance '{wanted}' (found: {', '.join(m.uuid for m in instances)})")
