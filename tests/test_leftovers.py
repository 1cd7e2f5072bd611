"""Process groups a killed gpushare left running: `gpushare doctor` lists them with their PIDs
and run folder, `gpushare run` names them when they hold its port, and `doctor --clean` stops
every member; a run in progress and processes gpushare did not start are never signalled.
Real processes throughout, under a private cache (GPUSHARE_CACHE)."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpushare import cli

from gpushare.serving import cleanup, leftovers
from gpushare.serving.engines import LaunchPlan
from gpushare.errors import ConfigError
from gpushare.serving.models import cache_root
from gpushare.serving.mps import MpsDaemon
from gpushare.serving.servers import ServerHandle, ensure_port_free
from helpers import (SSE_SERVER, alive, cli as run_cli, error_line, free_port, run_folder, server_pids, wait_until,
                     write_config)

pytestmark = pytest.mark.timeout(300)

USER_MODELS = cache_root() / "models"  # read at import, before any test points the cache elsewhere


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache and temp folder, so the user's registry and Ray folders are never read or
    written; whatever a failed test left in it is stopped."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GPUSHARE_CACHE", str(path))
    (tmp_path / "temp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    yield path
    cleanup.clean(leftovers.find(), 1.0)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def record_orphaned(kind: str, pid: int, name: str, argv: list[str], folder: Path, **where) -> None:
    """Record a group as a gpushare run would, then kill that run's stand-in (the owner)."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    leftovers.record(kind, pid, name, argv, folder, owner=owner.pid, **where)
    owner.kill()
    owner.wait()


def start_server(folder: Path, *extra: str) -> SimpleNamespace:
    """The test server in its own session (as gpushare starts servers), once it listens."""
    folder.mkdir(exist_ok=True)
    port = free_port()
    argv = [*SSE_SERVER, "--port", str(port), *extra]
    log = folder / "server-0.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: listening(port) and len(server_pids(log)) == 1 + bool(extra))
    return SimpleNamespace(proc=proc, argv=argv, port=port, folder=folder, pids=server_pids(log))


@pytest.fixture
def orphan(tmp_path):
    """A server with a SIGTERM-ignoring worker, recorded by an owner that has since been killed."""
    server = start_server(tmp_path / "run", "--child-ignoring-sigterm")
    record_orphaned("server", server.proc.pid, "fake", server.argv, server.folder, host="127.0.0.1", port=server.port)
    yield server
    if any(alive(pid) for pid in server.pids):  # the group is ours: the unreaped leader holds its id
        os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()


def test_doctor_lists_a_leftover_and_clean_stops_every_member(orphan, cache, capsys, monkeypatch):
    assert cli.main(["doctor", "--json"]) == 0
    (left,) = json.loads(capsys.readouterr().out)["leftovers"]
    assert (left["kind"], left["name"], left["pgid"], left["port"]) == ("server", "fake", orphan.proc.pid, orphan.port)
    assert sorted(left["members"]) == sorted(orphan.pids) and len(orphan.pids) == 2
    assert left["folder"] == str(orphan.folder.resolve())
    (listed,) = json.loads((orphan.folder / "processes.json").read_text())
    assert listed["pgid"] == orphan.proc.pid and listed["argv"] == orphan.argv
    assert cli.main(["doctor"]) == 0
    assert f"process group {orphan.proc.pid}" in capsys.readouterr().out
    assert all(alive(pid) for pid in orphan.pids)  # doctor alone changes nothing

    monkeypatch.setattr("gpushare.serving.engines.STOP_GRACE_S", 1.0)
    began = time.monotonic()
    assert cli.main(["doctor", "--clean"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"stopped server fake: process group {orphan.proc.pid} (pids ")
    assert out.endswith(f"run folder {orphan.folder.resolve()}")
    assert not any(alive(pid) for pid in orphan.pids)
    assert time.monotonic() - began >= 1.0  # the worker ignoring SIGTERM went by SIGKILL after the grace
    assert list((cache / "processes").iterdir()) == []
    assert cli.main(["doctor", "--clean"]) == 0
    assert capsys.readouterr().out.startswith("nothing to clean")


def test_a_port_held_by_a_leftover_names_it(orphan):
    with pytest.raises(ConfigError) as err:
        ensure_port_free("127.0.0.1", orphan.port, "servers[0].port")
    assert str(err.value) == (
        f"servers[0].port: port {orphan.port} on 127.0.0.1 is already in use by a server an earlier gpushare run "
        f"left behind (pid {orphan.proc.pid}, run folder {orphan.folder.resolve()}); "
        "stop it with: gpushare doctor --clean")


def test_a_group_whose_gpushare_lives_is_never_a_leftover(tmp_path, cache, capsys):
    server = start_server(tmp_path / "run")
    try:
        leftovers.record("server", server.proc.pid, "ours", server.argv, server.folder, host="127.0.0.1",
                         port=server.port)
        assert leftovers.find() == []
        assert cli.main(["doctor", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["leftovers"] == []
        assert cli.main(["doctor", "--clean"]) == 0
        assert capsys.readouterr().out.startswith("nothing to clean")
        assert alive(server.proc.pid) and (cache / "processes" / f"{server.proc.pid}.json").exists()
        with pytest.raises(ConfigError, match=r"already in use$"):
            ensure_port_free("127.0.0.1", server.port, "servers[0].port")
    finally:
        server.proc.kill()
        server.proc.wait()


def test_stale_entries_are_dropped_without_signalling(orphan, tmp_path, cache):
    entry_path = cache / "processes" / f"{orphan.proc.pid}.json"
    (found,) = leftovers.find()
    # The leader's PID now names another process: the group recorded must have ended.
    entry = json.loads(entry_path.read_text())
    entry_path.write_text(json.dumps({**entry, "start_time": entry["start_time"] + 1}))
    assert cleanup.clean([found], 1.0) == []
    assert leftovers.find() == [] and not entry_path.exists()
    assert all(alive(pid) for pid in orphan.pids)

    # A group that is gone.
    ended = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    record_orphaned("server", ended.pid, "ended", ["x"], tmp_path)
    ended.wait()
    assert leftovers.find() == [] and not (cache / "processes" / f"{ended.pid}.json").exists()


def test_a_server_handle_records_and_forgets_its_group(tmp_path, cache):
    port = free_port()
    handle = ServerHandle(LaunchPlan("s", f"http://127.0.0.1:{port}", [*SSE_SERVER, "--port", str(port)],
                                     ready_timeout_s=30), tmp_path / "server-0.log")
    handle.start()
    try:
        entry = json.loads((cache / "processes" / f"{handle.pid}.json").read_text())
        assert (entry["kind"], entry["host"], entry["port"]) == ("server", "127.0.0.1", port)
        assert entry["owner_pid"] == os.getpid()
        handle.wait_ready()
    finally:
        handle.stop()
    assert list((cache / "processes").iterdir()) == []
    (listed,) = json.loads((tmp_path / "processes.json").read_text())  # the run folder keeps what it started
    assert listed["pgid"] == handle.pid and listed["folder"] == str(tmp_path.resolve())



def test_a_leftover_mps_daemon_is_asked_to_quit(standin, tmp_path, cache):
    with MpsDaemon(tmp_path, 0, say=lambda m: None) as daemon:
        assert json.loads((cache / "processes" / f"{daemon.process.pid}.json").read_text())["kind"] == "mps"
    assert list((cache / "processes").iterdir()) == []

    pipe = tmp_path / "pipe"
    pipe.mkdir()
    daemon = subprocess.Popen(["nvidia-cuda-mps-control", "-f"], start_new_session=True,
                              env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe)})
    wait_until(lambda: (pipe / "control").exists())
    record_orphaned("mps", daemon.pid, "mps-control", ["nvidia-cuda-mps-control", "-f"], tmp_path, pipe_directory=pipe)
    (found,) = leftovers.find()
    assert [left.pgid for left in cleanup.clean([found], 10.0)] == [daemon.pid]
    assert daemon.wait(10) == 0 and standin.read_text().splitlines()[-2:] == ["quit clients_alive=0", "daemon exit"]


def killed_run(tmp_path, cache, *server_flags):
    """A `gpushare run` killed outright (SIGKILL) under load; returns its config, port, run
    folder and its server's PID."""
    if (USER_MODELS / "smollm2").exists():  # else `gpushare run` prepares it in the private cache
        cache.mkdir()
        (cache / "models").symlink_to(USER_MODELS)
    port = free_port()
    server = {"name": "fake", "command": [*SSE_SERVER, "--token-delay", "0.2", *server_flags], "port": port,
              "ready_timeout_s": 30, "stop_grace_s": 2}
    cfg = write_config(tmp_path / "scenario.yaml", scenario="t", servers=[server],
                       workload={"kind": "synthetic", "input_tokens": 8, "output_tokens": 4},
                       load={"concurrency": 2, "n_requests": 500, "warmup_requests": 1}, out=str(tmp_path / "runs"))
    proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(server_pids(log) for log in (tmp_path / "runs").glob("*/server-0.log"))
                   and listening(port), timeout=180)
    finally:
        proc.kill()
        proc.wait()
    folder = run_folder(tmp_path / "runs")
    (pid,) = server_pids(folder / "server-0.log")
    return cfg, port, folder, pid


def test_a_server_ends_with_the_gpushare_run_killed_outright(tmp_path, cache):
    """Its parent's death sends it SIGTERM (core.processes.end_with_parent): nothing to clean."""
    _, _, _, pid = killed_run(tmp_path, cache)
    wait_until(lambda: not alive(pid), timeout=30)


def test_a_killed_gpushare_run_leaves_a_server_doctor_finds_and_cleans(tmp_path, cache):
    """A server that ignores SIGTERM outlives its killed parent: doctor finds and stops it."""
    cfg, port, folder, pid = killed_run(tmp_path, cache, "--ignore-sigterm")
    time.sleep(1)
    assert alive(pid)

    doctor = run_cli("doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    (left,) = json.loads(doctor.stdout)["leftovers"]
    assert (left["pgid"], left["members"], left["folder"]) == (pid, [pid], str(folder.resolve()))
    assert left["stop_grace_s"] == 2  # its config's, which doctor --clean gives it
    assert json.loads((folder / "processes.json").read_text())[0]["pgid"] == pid

    again = run_cli("run", "--config", str(cfg))
    assert again.returncode == 2
    assert error_line(again.stderr) == (
        f"error: servers[0].port: port {port} on 127.0.0.1 is already in use by a server an earlier gpushare run "
        f"left behind (pid {pid}, run folder {folder.resolve()}); stop it with: gpushare doctor --clean")

    clean = run_cli("doctor", "--clean")
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.startswith(f"stopped server fake: process group {pid} (pids {pid})")
    assert not alive(pid)
    assert json.loads(run_cli("doctor", "--json").stdout)["leftovers"] == []


def test_doctor_lists_and_cleans_the_folders_of_ray_actors_that_are_gone(tmp_path, capsys):
    """An actor killed mid-cell leaves its private folder (the cell's requests, its logs) on
    the node; one whose actor runs is left alone."""
    gone = Path(tempfile.mkdtemp(prefix=leftovers.RAY_FOLDER_PREFIX))
    (gone / "a" / "c1_rep1").mkdir(parents=True)
    (gone / "a" / "c1_rep1" / "requests.csv").write_text("id\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (gone / leftovers.RAY_OWNER).write_text(json.dumps({"pid": dead.pid, "start_time": 1}))
    live = Path(tempfile.mkdtemp(prefix=leftovers.RAY_FOLDER_PREFIX))
    leftovers.mark_ray_folder(live)  # this process: an actor still running
    assert cli.main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ray_folders"] == [str(gone)]
    assert cli.main(["doctor"]) == 0
    assert "1 Ray folder(s)" in capsys.readouterr().out and gone.exists()  # doctor alone changes nothing
    assert cli.main(["doctor", "--clean"]) == 0
    assert capsys.readouterr().out.startswith(f"removed {gone}: a Ray actor's folder whose actor is gone")
    assert not gone.exists() and live.exists()
