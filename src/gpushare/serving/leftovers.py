"""Process groups an earlier gpushare started and never stopped (it was killed or crashed).

Every group gpushare starts (a server, an MPS control daemon) is recorded as one JSON file
under cache_root()/processes, and in its run folder's processes.json, and forgotten once seen
gone. A recorded group is a leftover while it has live members and the gpushare process that
started it (its owner) is gone; only leftovers are ever stopped, so a run in progress and
processes gpushare did not start are never touched.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Callable

from ..errors import RunFailure
from ..measure.results import write_json_atomic
from . import mps, servers
from .engines import redact
from .models import cache_root

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Leftover:
    kind: str
    """server or mps."""
    name: str
    pgid: int
    """The leader's PID, which names the group (start_new_session)."""
    start_time: int | None
    """The leader's start time in /proc (clock ticks after boot): tells a reused PID apart."""
    members: list[int]
    folder: str
    started: str
    argv: list[str]
    host: str | None
    port: int | None
    pipe_directory: str | None
    owner_pid: int


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


def registry() -> Path:
    return cache_root() / "processes"


def _start_time(pid: int) -> int | None:
    stat = servers.process_stat(pid)
    return None if stat is None else stat[1]


def record(kind: str, pid: int, name: str, argv: list[str], folder: Path, host: str | None = None,
           port: int | None = None, pipe_directory: Path | None = None, owner: int | None = None) -> None:
    """Note a group we just started (leader `pid`), owned by `owner` (default: this process), so
    that it is found if its owner dies without stopping it."""
    owner = os.getpid() if owner is None else owner
    entry = {
        "kind": kind, "name": name, "pid": pid, "pgid": pid, "start_time": _start_time(pid), "argv": redact(argv),
        "host": host, "port": port, "pipe_directory": None if pipe_directory is None else str(pipe_directory),
        "folder": str(Path(folder).resolve()), "owner_pid": owner, "owner_start_time": _start_time(owner),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    listed = Path(folder) / "processes.json"
    try:
        registry().mkdir(parents=True, exist_ok=True)
        write_json_atomic(registry() / f"{pid}.json", entry)
        write_json_atomic(listed, [*(json.loads(listed.read_text()) if listed.exists() else []), entry])
    except (OSError, ValueError) as err:
        raise RunFailure(f"cannot record process group {pid} of {kind} {name}: {err}") from None


def forget(pid: int) -> None:
    """Drop our entry for group `pid` once it has no live member; an entry another gpushare
    wrote since (the PID reused) is not ours to drop."""
    path = registry() / f"{pid}.json"
    try:
        if json.loads(path.read_text())["owner_pid"] == os.getpid() and not servers.group_members(pid):
            path.unlink()
    except (OSError, ValueError, KeyError):
        pass


def _examine(path: Path) -> Leftover | None:
    """The entry at `path` if it is a leftover. An entry whose group is gone is deleted: so is
    one whose leader's PID names another process now, as Linux reuses a PID only once no group
    of that id is left (a group whose leader died but whose members live on is still ours)."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    leader = _start_time(entry["pid"])
    members = [] if leader not in (None, entry["start_time"]) else servers.group_members(entry["pgid"])
    if not members:
        path.unlink(missing_ok=True)
        return None
    owner = servers.process_stat(entry["owner_pid"])
    if owner is not None and owner[0] != "Z" and owner[1] == entry["owner_start_time"]:
        return None  # a run in progress
    return Leftover(members=members, **{f.name: entry.get(f.name) for f in fields(Leftover) if f.name != "members"})


def find() -> list[Leftover]:
    """Live groups whose gpushare is gone, oldest first; stale entries are dropped on the way."""
    found = [left for path in registry().glob("*.json") if (left := _examine(path)) is not None]
    return sorted(found, key=lambda left: left.started)


def holding(host: str, port: int) -> Leftover | None:
    """The leftover server on host:port (a wildcard host on either side overlaps any), if any."""
    return next((left for left in find() if left.kind == "server" and left.port == port
                 and (left.host == host or host in WILDCARD_HOSTS or left.host in WILDCARD_HOSTS)), None)


RAY_FOLDER_PREFIX = "gpushare-ray-"
RAY_OWNER = "owner.json"


def mark_ray_folder(folder: Path) -> None:
    """Note in a Ray actor's private folder which process owns it, so that a folder whose
    actor was killed (it can run no clean-up) is told apart from one in use."""
    write_json_atomic(folder / RAY_OWNER, {"pid": os.getpid(), "start_time": _start_time(os.getpid())})


def ray_folders() -> list[Path]:
    """Ray actors' private folders (run folders of cells not handed back, their logs) on this
    node whose actor is gone; a folder without an owner note is an earlier version's."""
    found = []
    for folder in sorted(Path(tempfile.gettempdir()).glob(f"{RAY_FOLDER_PREFIX}*")):
        if not folder.is_dir() or folder.name.startswith(f"{RAY_FOLDER_PREFIX}local-"):
            continue  # a --ray local session folder: its driver removes it
        try:
            owner = json.loads((folder / RAY_OWNER).read_text())
        except FileNotFoundError:
            owner = None
        except (OSError, ValueError):
            continue
        if owner is not None and owner.get("start_time") is not None \
                and _start_time(int(owner["pid"])) == owner["start_time"]:
            continue  # its actor runs
        found.append(folder)
    return found


def _wait_gone(pgid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while servers.group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def clean(leftovers: list[Leftover], grace_s: float) -> list[Leftover]:
    """Stop each group that is still the same leftover when its turn comes: an MPS daemon is
    asked to quit first; then SIGTERM to the group, SIGKILL after `grace_s`. Returns those
    stopped (and forgotten)."""
    stopped = []
    for left in leftovers:
        path = registry() / f"{left.pgid}.json"
        now = _examine(path)
        if now is None or now.start_time != left.start_time:
            continue
        if left.kind == "mps" and left.pipe_directory and mps.send(Path(left.pipe_directory), "quit", timeout=grace_s):
            _wait_gone(left.pgid, grace_s)
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            if servers.group_members(left.pgid):
                servers._signal_group(left.pgid, sig)
                _wait_gone(left.pgid, wait_s)
        if not servers.group_members(left.pgid):
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
