"""MIG: each GPU model's profiles and their arithmetic for MIG-like emulation, and discovery of
existing MIG instances.

gpushare never creates, destroys or reconfigures MIG instances. It reads what NVML lists
and gives each server one instance through CUDA_VISIBLE_DEVICES=MIG-<uuid>.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from ..errors import ConfigError

# Profiles of an 80 GB H100 (A100 80 GB uses the same names): <g>g.<memory>gb, g of 7 slices.
# They are also what a GPU gpushare cannot identify gets, scaled to its memory.
H100_80GB_PROFILES = ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")
_PROFILE = re.compile(r"^(\d)g\.(\d+)gb$")


@dataclass(frozen=True)
class Profile:
    """A MIG GPU-instance profile, `<g>g.<m>gb`: g of the GPU's compute slices and about m GB."""

    name: str
    slices: int
    gpu_slices: int
    """The GPU's compute slices: 7, or 4 on an A30."""
    memory_gib: int
    """As the name says, a rounded size (an H200's 3g.71gb holds 69.75 GiB)."""


def parse_profiles(names: Iterable[str]) -> tuple[Profile, ...]:
    """Profiles from their names, smallest first; the largest is the whole GPU, so its slices
    are the GPU's. Other forms (`1g.18gb+me`: a 1g.18gb with media engines) are left out."""
    parsed = sorted(((int(m[1]), int(m[2]), name) for name in names if (m := _PROFILE.match(name))))
    gpu_slices = max((slices for slices, _, _ in parsed), default=0)
    return tuple(Profile(name, slices, gpu_slices, gib) for slices, gib, name in parsed)


# Each model's profiles by NVML's device name (a whole word of it: H200 but not GH200); where
# one name covers two memory sizes, the table whose whole-GPU profile is nearest the GPU's
# memory is the one.
_MODELS: tuple[tuple[re.Pattern[str], tuple[Profile, ...]], ...] = tuple(
    (re.compile(pattern), parse_profiles(names.split())) for pattern, names in (
        (r"\bA100\b", "1g.5gb 1g.10gb 2g.10gb 3g.20gb 4g.20gb 7g.40gb"),
        (r"\bA100\b", " ".join(H100_80GB_PROFILES)),
        (r"\bH100\b", " ".join(H100_80GB_PROFILES)),
        (r"\bH100\b", "1g.12gb 1g.24gb 2g.24gb 3g.47gb 4g.47gb 7g.94gb"),  # H100 NVL, 94 GB
        (r"\bH200\b", "1g.18gb 1g.35gb 2g.35gb 3g.71gb 4g.71gb 7g.141gb"),
        (r"\bB200\b", "1g.23gb 1g.45gb 2g.45gb 3g.90gb 4g.90gb 7g.180gb"),
        (r"\bA30\b", "1g.6gb 2g.12gb 4g.24gb"),
    )
)
_UNKNOWN_GPU = parse_profiles(H100_80GB_PROFILES)


def table_profiles(gpu_name: str, memory_gib: float) -> tuple[Profile, ...]:
    """gpushare's profiles for a GPU model; none for a model it does not know."""
    found = [table for pattern, table in _MODELS if pattern.search(gpu_name)]
    return min(found, key=lambda table: abs(max(p.memory_gib for p in table) - memory_gib), default=())


@dataclass(frozen=True)
class MigProfiles:
    """One GPU's MIG profiles, for mig_emulation to check and cap a server's profile by."""

    gpu: str
    """NVML's device name, e.g. NVIDIA H200."""
    profiles: tuple[Profile, ...]


@dataclass(frozen=True)
class Caps:
    """What a MIG-like server is limited to: GPU memory (GiB) and share of SMs (percent)."""

    memory_gib: float | None
    sm_percent: int | None


def profile_caps(profile: str, gpu_memory_gib: float, gpu: MigProfiles | None = None,
                 key: str = "mig_profile") -> Caps:
    """`3g.71gb` on an H200 -> 3/7 of the SMs (43 %) and 4/8 of the GPU's memory.

    A real instance holds whole eighths of the GPU's memory (its memory slices; an A30's
    quarters are eighths too). The names round their sizes (71 of 141 GB), so the eighths
    are the nearest to the name's share of the whole-GPU profile, and the cap is that share
    of this GPU's memory. Without `gpu` (no NVML, or a model gpushare does not know) the
    names are an 80 GB H100's."""
    table = _UNKNOWN_GPU if gpu is None else gpu.profiles
    found = next((p for p in table if p.name == profile), None)
    if found is None:
        names = ", ".join(p.name for p in table)
        raise ConfigError(f"{key}: unknown profile '{profile}' (allowed: {names})" if gpu is None else
                          f"{key}: {profile} is not a MIG profile of the {gpu.gpu} (its profiles: {names})")
    eighths = round(8 * found.memory_gib / max(p.memory_gib for p in table))
    return Caps(memory_gib=math.floor(gpu_memory_gib * eighths / 8 * 100) / 100,
                sm_percent=round(100 * found.slices / found.gpu_slices))


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


T = TypeVar("T")


def _with_nvml(needed_by: str, use: Callable[[Any], T]) -> T:
    """`use(pynvml)` in an NVML session; a one-line ConfigError where NVML is not available."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:
        raise ConfigError(f"{needed_by} needs NVML, which is not available here ({err})") from None
    try:
        return use(pynvml)
    finally:
        pynvml.nvmlShutdown()


def discover(gpu: int) -> list[MigInstance]:
    """MIG instances on GPU `gpu` through NVML (read only)."""

    def listed(nvml: Any) -> list[MigInstance]:
        if gpu >= nvml.nvmlDeviceGetCount():
            raise ConfigError(f"sharing.gpu: there is no GPU {gpu}")
        return mig_instances(nvml, gpu)

    return _with_nvml("sharing.mode: mig", listed)


def gpu_profiles(gpu: int) -> MigProfiles | None:
    """GPU `gpu`'s MIG profiles through NVML (read only); None without NVML or that GPU, or
    for a model gpushare does not know: mig_emulation then keeps an 80 GB H100's names."""
    try:
        return _with_nvml("mig_profile", lambda nvml: mig_profiles(nvml, nvml.nvmlDeviceGetHandleByIndex(gpu)))
    except Exception:  # whatever NVML could not answer, the H100 names answer
        return None


def mig_profiles(nvml: Any, handle: Any) -> MigProfiles | None:
    """The GPU's profiles as its driver lists them, else gpushare's table for its model (by
    name and memory size); None for a model in neither."""
    name = nvml.nvmlDeviceGetName(handle)
    found = driver_profiles(nvml, handle) or table_profiles(name, nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30)
    return MigProfiles(name, found) if found else None


def driver_profiles(nvml: Any, handle: Any) -> tuple[Profile, ...]:
    """The profiles NVML lists for the GPU, whatever its MIG mode (an H200's driver lists them
    with MIG disabled); none from a GPU that is not MIG-capable, or a driver or pynvml that
    does not name them."""
    names = []
    for profile_id in range(getattr(nvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0)):
        try:
            name = getattr(nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile_id), "name", b"")
        except nvml.NVMLError:
            continue  # not a profile of this GPU
        names.append((name.decode() if isinstance(name, bytes) else name).removeprefix("MIG "))
    return parse_profiles(names)


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
