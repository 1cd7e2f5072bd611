"""Stopping leftovers: the process groups, and Ray actors' folders, that `leftovers` finds
an earlier gpushare left behind (`gpushare doctor --clean`)."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

from ..core.processes import group_members, signal_group
from . import mps
from .leftovers import Leftover, examine, ray_folders, registry


def _wait_gone(pgid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def clean(leftovers: list[Leftover], grace_s: float) -> list[Leftover]:
    """Stop each group that is still the same leftover when its turn comes: an MPS daemon is
    asked to quit first; then SIGTERM to the group, SIGKILL after the grace its run gave it
    (else `grace_s`). Returns those stopped (and forgotten)."""
    stopped = []
    for left in leftovers:
        path = registry() / f"{left.pgid}.json"
        now = examine(path)
        if now is None or now.start_time != left.start_time:
            continue
        if left.kind == "mps" and left.pipe_directory and mps.send(Path(left.pipe_directory), "quit", timeout=grace_s):
            _wait_gone(left.pgid, grace_s)
        for sig, wait_s in ((signal.SIGTERM, left.stop_grace_s or grace_s), (signal.SIGKILL, 10.0)):
            if group_members(left.pgid):
                signal_group(left.pgid, sig)
                _wait_gone(left.pgid, wait_s)
        if not group_members(left.pgid):
            path.unlink(missing_ok=True)
            stopped.append(now)
    return stopped


def clean_ray_folders(folders: list[Path]) -> list[Path]:
    """Remove the Ray folders that are still left over when their turn comes; returns those removed."""
    removed = []
    for folder in folders:
        if folder in ray_folders():
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    return removed
