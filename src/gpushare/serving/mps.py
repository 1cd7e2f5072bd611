"""CUDA MPS control for one run: a private daemon per GPU, started before the servers, quit after them.

The daemon is started with CUDA_VISIBLE_DEVICES naming the run's GPU only (by its UUID where
NVML gives one, so that CUDA's device order cannot name another), so it serves that GPU and no other: scenarios on other GPUs of the machine run their own daemons beside it. Its
clients (the servers) count devices among those the daemon sees, so they name device 0. The
daemon runs in the foreground as our own child (`nvidia-cuda-mps-control -f`), so its
PID is known and it can be checked gone. Its pipe directory is private (mode 0700) and its
log directory is in the run folder. A daemon already running on the machine is neither
used nor stopped, unless the user names its pipe directory; then gpushare uses it and
leaves it running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..core.files import MPS_LOGS
from ..core.processes import end_with_parent
from ..errors import ConfigError, RunFailure
from . import leftovers

CONTROL = "nvidia-cuda-mps-control"
READY_TIMEOUT_S = 30.0
QUIT_TIMEOUT_S = 30.0


def visible_devices(pid: int) -> set[str] | None:
    """The CUDA_VISIBLE_DEVICES entries a process started with; None if it had none (it sees
    every GPU) or its environment cannot be read (assume the worst)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"CUDA_VISIBLE_DEVICES="):
            return {part.strip() for part in item.split(b"=", 1)[1].decode(errors="replace").split(",")}
    return None


def gpu_names(gpu: int, uuid: str | None) -> set[str]:
    """The names CUDA_VISIBLE_DEVICES may give a GPU by: its index, and its UUID where known."""
    return {str(gpu), *([uuid] if uuid else [])}


def daemons_on(gpu_ids: set[str]) -> list[int]:
    """Control daemons that may serve a GPU known by any of `gpu_ids` (its index, its UUID)."""
    return [pid for pid in running_control_daemons()
            if (seen := visible_devices(pid)) is None or seen & gpu_ids]


def running_control_daemons() -> list[int]:
    """PIDs of MPS control daemons on this machine (read from /proc; nothing is signalled)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:2]
        except OSError:
            continue
        if any(os.path.basename(arg.decode(errors="replace")) == CONTROL for arg in argv):
            pids.append(int(entry.name))
    return pids


def send(pipe_directory: Path, command: str, timeout: float = 10.0) -> bool:
    """Send one command to the control daemon at `pipe_directory`; True if it answered with success."""
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe_directory)}
    try:
        out = subprocess.run([CONTROL], input=command + "\n", capture_output=True, text=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def preflight(existing_pipe_directory: Path | None, gpu_ids: set[str]) -> None:
    """Refuse, before anything starts, what this machine cannot do or what is not ours: a
    daemon (anyone's, another scenario's too) that serves the run's GPU. `gpu_ids` are the
    names of the run's GPU (index, and UUID where NVML gives it)."""
    if shutil.which(CONTROL) is None:
        raise ConfigError(f"sharing.mode: MPS needs {CONTROL} on PATH; it was not found")
    if existing_pipe_directory is not None:
        if not send(existing_pipe_directory, "get_server_list"):
            raise ConfigError(f"sharing.mps_pipe_directory: no MPS daemon answers at {existing_pipe_directory}")
        return
    others = daemons_on(gpu_ids)
    if others:
        raise ConfigError(
            f"sharing.mode: an MPS control daemon already serves GPU {min(gpu_ids, key=len)} "
            f"(pid {', '.join(map(str, others))}); "
            "gpushare neither uses nor stops it: name its pipe directory in sharing.mps_pipe_directory to use it"
        )


class MpsDaemon:
    """Context manager: `with MpsDaemon(run_dir) as mps: env = mps.client_env`."""

    def __init__(self, run_dir: Path, gpu: int, existing_pipe_directory: Path | None = None,
                 say: Callable[[str], None] = print, gpu_uuid: str | None = None):
        self.run_dir = run_dir
        self.gpu = gpu
        self.gpu_uuid = gpu_uuid
        self.gpu_ids = gpu_names(gpu, gpu_uuid)
        self.existing = existing_pipe_directory
        self.say = say
        self.process: subprocess.Popen[bytes] | None = None
        self.pipe_directory: Path | None = None
        self.log_directory = run_dir / MPS_LOGS

    @property
    def client_env(self) -> dict[str, str]:
        """What every server started under this daemon needs in its environment."""
        assert self.pipe_directory is not None
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_directory)}

    def __enter__(self) -> "MpsDaemon":
        preflight(self.existing, self.gpu_ids)
        if self.existing is not None:
            self.pipe_directory = self.existing
            self.say(f"MPS: using the running daemon at {self.existing} (it will be left running)")
            return self
        self.pipe_directory = Path(tempfile.mkdtemp(prefix="gpushare-mps-"))  # short path: it holds sockets
        os.chmod(self.pipe_directory, 0o700)
        self.log_directory.mkdir(mode=0o700, exist_ok=True)
        env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_directory),
               "CUDA_MPS_LOG_DIRECTORY": str(self.log_directory), "CUDA_VISIBLE_DEVICES": self.gpu_uuid or str(self.gpu)}
        with open(self.log_directory / "daemon-stdout.log", "ab") as out:
            try:
                self.process = subprocess.Popen([CONTROL, "-f"], stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                                preexec_fn=end_with_parent)
            except OSError as err:
                raise RunFailure(f"MPS: cannot start {CONTROL}: {err.strerror}") from None
        try:
            leftovers.record("mps", self.process.pid, "mps-control", [CONTROL, "-f"], self.run_dir,
                             pipe_directory=self.pipe_directory)
        except RunFailure:
            self.__exit__(None, None, None)  # __enter__ failed: nothing else will quit it
            raise
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not send(self.pipe_directory, "get_server_list"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.__exit__(None, None, None)
                raise RunFailure(f"MPS: the control daemon did not start; last log lines: {tail}")
            time.sleep(0.2)
        self.say(f"MPS: control daemon pid {self.process.pid} for GPU {self.gpu}, pipe directory {self.pipe_directory}")
        return self

    def log_tail(self, lines: int = 6) -> str:
        texts = []
        for name in ("control.log", "daemon-stdout.log", "server.log"):
            path = self.log_directory / name
            if path.exists():
                texts += [f"{name}: {line}" for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return " | ".join(texts[-lines:]) or "(empty)"

    def __exit__(self, *exc: object) -> None:
        """Quit our daemon (its clients must be stopped first) and check it is gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            send(self.pipe_directory, "quit", timeout=QUIT_TIMEOUT_S)
            try:
                self.process.wait(timeout=QUIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.say(f"MPS: the control daemon (pid {self.process.pid}) did not quit; killing it")
                self.process.kill()
                self.process.wait()
        if self.pipe_directory is not None and self.existing is None:
            shutil.rmtree(self.pipe_directory, ignore_errors=True)
        leftovers.forget(self.process.pid)
        self.process = None
