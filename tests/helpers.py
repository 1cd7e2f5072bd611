"""Shared test helpers: free ports, process liveness, running the CLI, writing configs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gpushare.core.processes import process_alive

alive = process_alive  # the tests' short name: the process exists and is not a zombie

TESTS = Path(__file__).resolve().parent
SSE_SERVER = [sys.executable, str(TESTS / "sse_server.py")]
FAULT_SERVER = [sys.executable, str(TESTS / "fault_server.py")]
MPS_STANDIN = TESTS / "mps_standin"
CPU_SERVER = {
    "engine": "vllm",
    "args": ["--dtype=float32", "--enforce-eager", "--max-model-len=1024"],
    "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
    "ready_timeout_s": 600,
}
"""The end-to-end tests' real vLLM CPU server (its `servers[]` entry, less name and port)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float = 30.0, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll_s)


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def cli(*args: str, cwd: Path | None = None, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpushare.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **popen)


def run_folder(out: Path) -> Path:
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _pid_lines(log: Path) -> list[tuple[str, int]]:
    """(who, PID) for each line the test server printed as "server pid N" or "child pid N"."""
    return [(line.split(" pid ")[0], int(line.rsplit(" ", 1)[1])) for line in log.read_text().splitlines()
            if line.endswith(tuple("0123456789")) and " pid " in line]


def server_pids(log: Path) -> list[int]:
    """PIDs the test server printed into its log (itself and any child)."""
    return [pid for _, pid in _pid_lines(log)]


def pid_of(log: Path, who: str) -> int:
    """The PID the test server printed for `who` ("server" or "child")."""
    return next(pid for name, pid in _pid_lines(log) if name == who)


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no error printed"
    assert "Traceback" not in stderr, stderr
    return lines[-1]


def environ_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
