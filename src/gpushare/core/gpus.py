"""The GPUs NVML lists on a machine, typed: what `environment.gpus()` reads, env.json keeps,
and preflight, the run's location, MPS and the executors look GPUs up in."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class GpuDevice(BaseModel):
    """One GPU as NVML lists it; an older env.json may lack any key but the index."""

    model_config = ConfigDict(frozen=True)

    index: int
    name: str | None = None
    uuid: str | None = None
    memory_mib: int | None = None
    mig_enabled: bool | None = None
    """None: not MIG-capable."""
    compute_mode: int | None = None


class GpuInfo(BaseModel):
    """NVML's view of the machine: the driver and each GPU, or why NVML could not be read."""

    model_config = ConfigDict(frozen=True)

    nvml: bool = False
    reason: str | None = None
    """Why NVML is not available (nvml false)."""
    devices: list[GpuDevice] = []
    driver: str | None = None
    cuda_driver: int | None = None

    def device(self, index: int) -> GpuDevice | None:
        """GPU `index`; None where NVML does not list it."""
        return next((d for d in self.devices if d.index == index), None)

    def by_uuid(self, uuid: str) -> GpuDevice | None:
        return next((d for d in self.devices if d.uuid == uuid), None)

    def count(self) -> int | None:
        """How many GPUs NVML lists; None without NVML."""
        return len(self.devices) if self.nvml else None
