"""Process primitives read from /proc and sent with signals: what server start-up, stopping
and the clean-up of leftovers share.
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path
from typing import Callable


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process group; one already gone (or not ours) is no error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def process_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of a process, from /proc/PID/stat (fields
    3 and 22); None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return stat[0], int(stat[19])


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks after boot), which tells a reused PID apart; None if gone."""
    stat = process_stat(pid)
    return None if stat is None else stat[1]


def process_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    stat = process_stat(pid)
    return stat is not None and stat[0] != "Z"


def snapshot(pids: list[int]) -> dict[int, int | None]:
    """The processes with their start times, so that `still_running` can tell each from a
    later process given its PID (Linux reuses a dead member's PID, or gives it to a thread,
    once its counter wraps at pid_max: 32768 by default)."""
    return {pid: start_time(pid) for pid in pids}


def still_running(taken: dict[int, int | None]) -> list[int]:
    """The processes of a `snapshot` that still run (not a zombie, not a reused PID)."""
    running = []
    for pid, started in taken.items():
        stat = process_stat(pid)
        if stat is not None and stat[0] != "Z" and stat[1] == started:
            running.append(pid)
    return running


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _parent_death_signal() -> Callable[[], None]:
    """`end_with_parent`, made before any fork: the child must not load a library."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # not Linux: the registry and `doctor --clean` remain
        return lambda: None
    pr_set_pdeathsig = 1

    def end_with_parent() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return end_with_parent


end_with_parent = _parent_death_signal()
"""For Popen's preexec_fn: the child gets SIGTERM when the thread that started it dies, so a
server or MPS daemon never outlives a gpushare process killed outright (SIGKILL, or a Ray
worker killed with its driver); SIGTERM lets vLLM stop its own engine processes."""
