"""MIG: profile arithmetic for MIG-like emulation, and discovery of existing MIG instances.

gpushare never creates, destroys or reconfigures MIG instances. It reads what NVML lists
and gives each server one instance through CUDA_VISIBLE_DEVICES=MIG-<uuid>.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

# Profiles of an 80 GB H100 (A100 80 GB uses the same names): <g>g.<memory>gb, g of 7 slices.
H100_80GB_PROFILES = ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")
COMPUTE_SLICES = 7
PROFILE_MEMORY_GB = 80
_PROFILE = re.compile(r"^(\d)g\.(\d+)gb$")


@dataclass(frozen=True)
class Caps:
    """What a MIG-like server is limited to: GPU memory (GiB) and share of SMs (percent)."""

    memory_gib: float | None
    sm_percent: int | None


def profile_caps(profile: str, gpu_memory_gib: float) -> Caps:
    """`3g.40gb` -> 3/7 of the SMs (43 %) and 40/80 of the GPU's memory.

    A real instance holds a number of the GPU's 8 memory slices, so the emulated cap is
    that share of this GPU's memory."""
    match = _PROFILE.match(profile)
    if match is None or profile not in H100_80GB_PROFILES:
        raise ConfigError(f"mig_profile: unknown profile '{profile}' (allowed: {', '.join(H100_80GB_PROFILES)})")
    slices, memory_gb = int(match.group(1)), int(match.group(2))
    return Caps(memory_gib=math.floor(gpu_memory_gib * memory_gb / PROFILE_MEMORY_GB * 100) / 100,
                sm_percent=round(100 * slices / COMPUTE_SLICES))


def memory_fraction(cap_gib: float, total_gib: float, headroom_gib: float) -> float:
    """vLLM's --gpu-memory-utilization for a memory cap.

    The fraction is of the whole GPU, and CUDA (under MPS too) still reports the whole
    GPU's memory, so the cap is turned into a fraction with headroom for what vLLM does
    not count (CUDA context, activations outside its budget)."""
    if cap_gib > total_gib:
        raise ConfigError(f"memory_gib: a cap of {cap_gib:g} GiB is more than the GPU's {total_gib:.1f} GiB")
    budget = cap_gib - headroom_gib
    fraction = math.floor(budget / total_gib * 10_000) / 10_000  # down: never above the cap
    if fraction * total_gib > budget:  # floating point put the floor on the wrong side of an exact step
        fraction -= 1 / 10_000
    if fraction <= 0:
        raise ConfigError(f"memory_gib: a cap of {cap_gib:g} GiB leaves nothing after {headroom_gib:g} GiB of headroom")
    return fraction


@dataclass(frozen=True)
class MigInstance:
    gpu: int
    index: int
    uuid: str
    name: str
    memory_mib: int


def discover(gpu: int) -> list[MigInstance]:
    """MIG instances on GPU `gpu` through NVML (read only)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:
        raise ConfigError(f"sharing.mode: mig needs NVML, which is not available here ({err})") from None
    try:
        if gpu >= pynvml.nvmlDeviceGetCount():
            raise ConfigError(f"sharing.gpu: there is no GPU {gpu}")
        return mig_instances(pynvml, gpu)
    finally:
        pynvml.nvmlShutdown()


def mig_instances(nvml: Any, gpu: int) -> list[MigInstance]:
    """The MIG instances on GPU `gpu`, in NVML's order; ConfigError where MIG is off."""
    handle = nvml.nvmlDeviceGetHandleByIndex(gpu)
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:
        raise ConfigError(f"sharing.mode: mig needs a MIG-capable GPU; GPU {gpu} is not") from None
    if current != nvml.NVML_DEVICE_MIG_ENABLE:
        raise ConfigError(
            f"sharing.mode: MIG is disabled on GPU {gpu}; gpushare does not change MIG modes "
            "(an administrator enables it and creates instances with nvidia-smi mig)"
        )
    out = []
    for i in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
        except nvml.NVMLError:
            continue  # an empty slot
        out.append(MigInstance(gpu, i, nvml.nvmlDeviceGetUUID(mig), nvml.nvmlDeviceGetName(mig),
                               nvml.nvmlDeviceGetMemoryInfo(mig).total // 2**20))
    if not out:
        raise ConfigError(f"sharing.mode: MIG is enabled on GPU {gpu} but it has no instances")
    return out
