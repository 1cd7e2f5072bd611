"""Process groups an earlier gpushare started and never stopped (it was killed or crashed).

Every group gpushare starts (a server, an MPS control daemon) is recorded as one JSON file
under cache_root()/processes, and in its run folder's processes.json, and forgotten once seen
gone. A recorded group is a leftover while it has live members and the gpushare process that
started it (its owner) is gone; only leftovers are ever stopped, so a run in progress and
processes gpushare did not start are never touched.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

from ..core.files import PROCESSES, write_json_atomic
from ..core.processes import group_members, process_stat, start_time
from ..errors import RunFailure
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
    stop_grace_s: float | None = None
    """The grace its run gave it after SIGTERM (servers[].stop_grace_s); None for an MPS daemon
    or an entry written before it was recorded."""


def registry() -> Path:
    return cache_root() / "processes"


def record(kind: str, pid: int, name: str, argv: list[str], folder: Path, host: str | None = None,
           port: int | None = None, pipe_directory: Path | None = None, owner: int | None = None,
           stop_grace_s: float | None = None) -> None:
    """Note a group we just started (leader `pid`), owned by `owner` (default: this process), so
    that it is found if its owner dies without stopping it."""
    owner = os.getpid() if owner is None else owner
    entry = {
        "kind": kind, "name": name, "pid": pid, "pgid": pid, "start_time": start_time(pid), "argv": redact(argv),
        "host": host, "port": port, "pipe_directory": None if pipe_directory is None else str(pipe_directory),
        "folder": str(Path(folder).resolve()), "owner_pid": owner, "owner_start_time": start_time(owner),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"), "stop_grace_s": stop_grace_s,
    }
    listed = Path(folder) / PROCESSES
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
        if json.loads(path.read_text())["owner_pid"] == os.getpid() and not group_members(pid):
            path.unlink()
    except (OSError, ValueError, KeyError):
        pass


def examine(path: Path) -> Leftover | None:
    """The entry at `path` if it is a leftover. An entry whose group is gone is deleted: so is
    one whose leader's PID names another process now, as Linux reuses a PID only once no group
    of that id is left (a group whose leader died but whose members live on is still ours)."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    leader = start_time(entry["pid"])
    members = [] if leader not in (None, entry["start_time"]) else group_members(entry["pgid"])
    if not members:
        path.unlink(missing_ok=True)
        return None
    owner = process_stat(entry["owner_pid"])
    if owner is not None and owner[0] != "Z" and owner[1] == entry["owner_start_time"]:
        return None  # a run in progress
    return Leftover(members=members, **{f.name: entry.get(f.name) for f in fields(Leftover) if f.name != "members"})


def find() -> list[Leftover]:
    """Live groups whose gpushare is gone, oldest first; stale entries are dropped on the way."""
    found = [left for path in registry().glob("*.json") if (left := examine(path)) is not None]
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
    write_json_atomic(folder / RAY_OWNER, {"pid": os.getpid(), "start_time": start_time(os.getpid())})


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
                and start_time(int(owner["pid"])) == owner["start_time"]:
            continue  # its actor runs
        found.append(folder)
    return found
