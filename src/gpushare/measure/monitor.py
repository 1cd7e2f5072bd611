"""GPU sampling through NVML into gpu.csv, on the same clock as the request records.

With no NVML (no driver, no GPU) the file holds only its header and the run goes on.
Sampling only reads: it never changes a clock, a power limit or a mode.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Collection

GPU_COLUMNS = [
    "t",
    "gpu",
    "uuid",
    "gpu_util_pct",
    "mem_util_pct",
    "mem_used_mib",
    "mem_total_mib",
    "power_w",
    "energy_j",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "temp_c",
    "throttle_reasons",
    "processes",
]
"""`processes` lists pid:pgid:MiB of each compute process, separated by ';'."""


def _nvml() -> Any | None:
    """The initialised pynvml module, or None where NVML cannot be used."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _read(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception:
        return None


def sample_gpu(nv: Any, index: str, handle: Any, uuid: str, t: float) -> dict[str, Any]:
    util = _read(lambda: nv.nvmlDeviceGetUtilizationRates(handle))
    mem = _read(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
    power = _read(lambda: nv.nvmlDeviceGetPowerUsage(handle))
    energy = _read(lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle))
    procs = _read(lambda: nv.nvmlDeviceGetComputeRunningProcesses(handle)) or []
    return {
        "t": f"{t:.6f}",
        "gpu": index,
        "uuid": uuid,
        "gpu_util_pct": None if util is None else util.gpu,
        "mem_util_pct": None if util is None else util.memory,
        "mem_used_mib": None if mem is None else mem.used // 2**20,
        "mem_total_mib": None if mem is None else mem.total // 2**20,
        "power_w": None if power is None else power / 1000.0,
        "energy_j": None if energy is None else energy / 1000.0,
        "sm_clock_mhz": _read(lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM)),
        "mem_clock_mhz": _read(lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_MEM)),
        "temp_c": _read(lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)),
        "throttle_reasons": _read(lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(handle)),
        "processes": ";".join(
            f"{p.pid}:{_pgid(p.pid)}:{(p.usedGpuMemory or 0) // 2**20}"
            for p in procs if getattr(p, "pid", None) is not None
        ),
    }


def _pgid(pid: int) -> int | str:
    """The process group of a GPU process: a launched server's group id is its leader's PID,
    so engine workers are matched to their server. Empty where the PID is not visible."""
    try:
        return os.getpgid(pid)
    except OSError:
        return ""


def sampled_devices(nv: Any, gpus: Collection[int] | None = None) -> list[tuple[str, Any, str]]:
    """(label, handle, uuid) for every GPU of `gpus` (None: all) and, where MIG is on, every
    MIG instance (labelled `gpu:instance`; NVML gives instances memory but not utilisation)."""
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        if gpus is not None and i not in gpus:
            continue  # another run's GPU: its power and energy are not this run's
        handle = nv.nvmlDeviceGetHandleByIndex(i)
        out.append((str(i), handle, _read(lambda h=handle: nv.nvmlDeviceGetUUID(h)) or ""))
        mode = _read(lambda h=handle: nv.nvmlDeviceGetMigMode(h))
        if not mode or mode[0] != nv.NVML_DEVICE_MIG_ENABLE:
            continue
        for j in range(_read(lambda h=handle: nv.nvmlDeviceGetMaxMigDeviceCount(h)) or 0):
            mig = _read(lambda h=handle, j=j: nv.nvmlDeviceGetMigDeviceHandleByIndex(h, j))
            if mig is not None:
                out.append((f"{i}:{j}", mig, _read(lambda m=mig: nv.nvmlDeviceGetUUID(m)) or ""))
    return out


class GpuMonitor:
    """Background sampler of the run's GPUs (`gpus`; None: all); use as a context manager
    around the whole run."""

    def __init__(self, path: Path, interval_s: float = 0.2, clock: Callable[[], float] = time.perf_counter,
                 say: Callable[[str], None] = print, gpus: Collection[int] | None = None):
        self.path = path
        self.gpus = gpus
        self.interval_s = interval_s
        self.clock = clock
        self.say = say
        self.samples = 0
        self.available = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuMonitor":
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=GPU_COLUMNS)
        self._writer.writeheader()
        self._file.flush()
        nv = _nvml()
        if nv is None:
            self.say("GPU monitor: NVML is not available here; gpu.csv will hold only its header")
            return self
        self.available = True
        devices = sampled_devices(nv, self.gpus)
        self._thread = threading.Thread(target=self._loop, args=(nv, devices), name="gpu-monitor", daemon=True)
        self._thread.start()
        return self

    def _loop(self, nv: Any, devices: list[tuple[str, Any, str]]) -> None:
        try:
            while not self._stop.is_set():
                t = self.clock()
                for index, handle, uuid in devices:
                    self._writer.writerow(sample_gpu(nv, index, handle, uuid, t))
                self.samples += 1
                if self.samples % 25 == 0:
                    self._file.flush()
                self._stop.wait(self.interval_s)
        finally:
            _read(nv.nvmlShutdown)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._file.close()
