"""A matrix over several GPUs: side by side on this machine (--gpus) and on a real local Ray
cluster with two (fake) GPUs (--ray). Servers are the SSE test server: launched by gpushare
for --gpus (their ports allocated), external engines for Ray. test_e2e.py runs a real vLLM
cell through Ray."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from gpushare.fleet.local_gpus import parse_gpus
from gpushare.errors import ConfigError, RunFailure
from gpushare.core.gpus import GpuDevice, GpuInfo
from gpushare.measure.results import assigned_gpu, read_run_config, read_verdict
from helpers import SSE_SERVER, alive, cli, error_line, free_port, summary, wait_until, write_config

WORKLOAD = {"kind": "synthetic", "input_tokens": 8, "output_tokens": 4}


def launched(tmp_path: Path, name: str) -> Path:
    """A scenario whose server gpushare starts, on a port it allocates (the config names none)."""
    server = {"name": "s", "command": [*SSE_SERVER, "--token-delay", "0.01"], "ready_timeout_s": 30}
    return write_config(tmp_path / f"{name}.yaml", scenario=name, servers=[server], workload=WORKLOAD,
                        load={"concurrency": 1, "n_requests": 4, "warmup_requests": 1})


@pytest.fixture
def external_servers(tmp_path):
    """Two SSE servers this test starts and stops: the Ray scenarios' external engines."""
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        procs.append(subprocess.Popen([*SSE_SERVER, "--port", str(port), "--token-delay", "0.01"],
                                      stdout=open(tmp_path / f"sse-{i}.log", "wb"), stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{port}")
    yield urls
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def external(tmp_path: Path, name: str, url: str) -> Path:
    return write_config(tmp_path / f"{name}.yaml", scenario=name, servers=[{"name": "x", "engine": "external",
                                                                          "url": url}],
                        model="smollm2", workload=WORKLOAD, load={"concurrency": 2, "warmup_requests": 1})


def windows(out: Path, scenario: str) -> tuple[float, float]:
    """When a scenario's measured requests were sent, over all its cells (perf_counter: the
    machine's monotonic clock, one for every process of this machine)."""
    frames = [pd.read_csv(cell / "requests.csv") for cell in sorted((out / scenario).glob("c*_rep*"))]
    requests = pd.concat(frames)
    measured = requests[requests["warmup"] == 0]
    return measured["sent"].min(), measured["sent"].max()


def shape(out: Path) -> dict:
    """What a matrix folder holds, without its values: files per cell, summary keys, index keys."""
    index = json.loads((out / "matrix.json").read_text())
    cells = {}
    for entry in index["cells"]:
        folder = out / entry["scenario"] / entry["cell"]
        cells[(entry["scenario"], entry["cell"])] = (
            sorted(p.name for p in folder.iterdir()), sorted(summary(folder)), sorted(entry), entry["status"])
    return {"counts": index["counts"], "cells": cells}


def test_gpus_flag_is_checked_in_one_line():
    assert parse_gpus("0,1", 2) == [0, 1] and parse_gpus("all", 4) == [0, 1, 2, 3]
    assert parse_gpus("0,7", None, unchecked=True) == [0, 7]
    for value, message in (("0,0", "distinct"), ("a", "separated by commas"), ("3", "there is no GPU 3"),
                           ("all", "needs NVML")):
        with pytest.raises(ConfigError, match=f"--gpus: .*{message}"):
            parse_gpus(value, 2 if value == "3" else None)
    for available in (None, 0):
        with pytest.raises(ConfigError, match="--gpus: NVML .*GPU 7 cannot be checked.*--unchecked-gpus"):
            parse_gpus("7", available)


def test_gpus_without_nvml_are_refused_unless_unchecked(tmp_path):
    """This machine has no NVML: indices it cannot check are refused before anything runs."""
    config = launched(tmp_path, "a")
    out = tmp_path / "m"
    proc = cli("matrix", "--configs", str(config), "--concurrency", "1", "--gpus", "7", "--out", str(out))
    assert proc.returncode == 2
    assert error_line(proc.stderr).startswith("error: --gpus: NVML is not available here, so GPU 7 cannot be checked")
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    proc = cli("matrix", "--configs", str(config), "--concurrency", "1", "--unchecked-gpus", "--out", str(out))
    assert proc.returncode == 2 and error_line(proc.stderr) == "error: --unchecked-gpus: only with --gpus"


def test_scenarios_run_side_by_side_on_two_gpus(tmp_path):
    configs = [launched(tmp_path, "a"), launched(tmp_path, "b")]
    args = ["--concurrency", "1", "2", "--duration", "2"]
    out = tmp_path / "two"
    started = time.time()
    proc = cli("matrix", "--configs", *map(str, configs), *args, "--gpus", "0,1", "--unchecked-gpus", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "on GPU 0" in proc.stderr and "on GPU 1" in proc.stderr
    a, b = windows(out, "a"), windows(out, "b")
    assert a[0] < b[1] and b[0] < a[1], (a, b)  # their measured windows overlapped
    ports = {summary(out / name / "c1_rep1")["servers"][0]["base_url"] for name in ("a", "b")}
    assert len(ports) == 2  # allocated, one each
    for name in ("a", "b"):
        pid = summary(out / name / "c1_rep1")["servers"][0]["pid"]
        assert not alive(pid)
        assert (out / "fleet-logs").glob(f"gpu*-{name}.log")

    here = tmp_path / "here"  # the same plan, one scenario after another
    assert cli("matrix", "--configs", *map(str, configs), *args, "--out", str(here)).returncode == 0
    assert shape(out) == shape(here)
    assert time.time() - started < 120


def test_a_signal_to_the_driver_reaches_every_gpu_worker(tmp_path):
    configs = [launched(tmp_path, "a"), launched(tmp_path, "b")]
    out = tmp_path / "m"
    driver = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "matrix", "--configs", *map(str, configs),
                               "--concurrency", "1", "2", "--duration", "30", "--gpus", "0,1", "--unchecked-gpus", "--out", str(out)],
                              stderr=subprocess.PIPE, text=True)
    wait_until(lambda: all((out / name / "c1_rep1" / "requests.csv").exists() for name in ("a", "b")), 60)
    time.sleep(1)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130, stderr
    index = json.loads((out / "matrix.json").read_text())
    by_cell = {(c["scenario"], c["cell"]): c for c in index["cells"]}
    for name in ("a", "b"):
        first = summary(out / name / "c1_rep1")
        assert not first["complete"] and "interrupted by SIGINT" in first["error"]
        assert by_cell[(name, "c2_rep1")]["status"] == "not_run"
        assert not alive(first["servers"][0]["pid"])


def pids_running(marker: bytes) -> list[int]:
    """This machine's processes whose command line holds `marker`: b"gpushare.fleet.worker"
    for `--gpus` workers, b"ScenarioActor" for the Ray workers that hold a scenario (Ray titles
    them ray::ScenarioActor)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_dead_gpu_worker_fails_its_cell_under_way_and_not_the_cells_it_never_began(tmp_path):
    config = launched(tmp_path, "a")
    out = tmp_path / "m"
    driver = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "matrix", "--configs", str(config),
                               "--concurrency", "1", "2", "3", "--duration", "30", "--gpus", "0", "--unchecked-gpus",
                               "--out", str(out)], stderr=subprocess.PIPE, text=True)
    worker = b"gpushare.fleet.worker"
    wait_until(lambda: (out / "a" / "c1_rep1" / "requests.csv").exists() and pids_running(worker), 60)
    os.kill(pids_running(worker)[0], signal.SIGKILL)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 1, stderr
    by_cell = {c["cell"]: c for c in json.loads((out / "matrix.json").read_text())["cells"]}
    assert by_cell["c1_rep1"]["status"] == "failed" and "lost its worker on GPU 0" in by_cell["c1_rep1"]["error"]
    for later in ("c2_rep1", "c3_rep1"):
        assert by_cell[later]["status"] == "not_run", by_cell[later]
        assert by_cell[later]["error"].startswith("not begun: scenario a lost its worker on GPU 0")


@pytest.mark.timeout(600)
def test_ray_matrix_overlaps_and_matches_a_local_run(tmp_path, ray_cluster, external_servers):
    configs = [external(tmp_path, "a", external_servers[0]), external(tmp_path, "b", external_servers[1])]
    args = ["--concurrency", "1", "2", "--duration", "2"]
    out = tmp_path / "ray"
    proc = cli("matrix", "--configs", *map(str, configs), *args, "--ray", ray_cluster, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    a, b = windows(out, "a"), windows(out, "b")
    assert a[0] < b[1] and b[0] < a[1], (a, b)
    gpus = {line.rsplit(" on ", 1)[1].split(" of ")[0] for line in proc.stderr.splitlines() if " on GPU " in line}
    assert gpus == {"GPU 0", "GPU 1"}
    index = json.loads((out / "matrix.json").read_text())
    assert {c["location"]["node"] for c in index["cells"]} == {os.uname().nodename}
    assert (out / "a" / "console.log").exists()  # the scenario's own files came back too

    here = tmp_path / "here"
    assert cli("matrix", "--configs", *map(str, configs), *args, "--out", str(here)).returncode == 0
    ray_shape, here_shape = shape(out), shape(here)
    for cell, (files, keys, entry, status) in here_shape["cells"].items():
        assert ray_shape["cells"][cell] == (files, keys, entry, status)
    assert ray_shape["counts"] == here_shape["counts"] == {"complete": 4, "skipped": 0, "failed": 0, "not_run": 0}


@pytest.mark.timeout(600)
def test_every_ray_cell_names_and_samples_its_actors_gpu(tmp_path, ray_cluster, external_servers):
    """Two scenarios on the cluster's two GPUs, one under MPS: whichever GPU Ray gives each,
    every cell's configuration (what its GPU monitor samples and its location names), its
    MPS daemon and the progress line name that GPU; the driver's plan says GPU 0 for both."""
    configs = [external(tmp_path, "a", external_servers[0]),
               write_config(tmp_path / "m.yaml", scenario="m", sharing={"mode": "mps"},
                            servers=[{"name": "x", "engine": "external", "url": external_servers[1]}],
                            model="smollm2", workload=WORKLOAD, load={"concurrency": 2, "warmup_requests": 1})]
    out = tmp_path / "ray"
    proc = cli("matrix", "--configs", *map(str, configs), "--concurrency", "1", "2", "--duration", "1",
               "--ray", ray_cluster, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    where = {line.split("] ", 1)[1].split()[0]: int(line.rsplit(" on GPU ", 1)[1].split()[0])
             for line in proc.stderr.splitlines() if " on GPU " in line}
    assert sorted(where.values()) == [0, 1], proc.stderr
    for name, gpu in where.items():
        for cell in ("c1_rep1", "c2_rep1"):
            folder = out / name / cell
            assert read_run_config(folder).sharing.gpu == gpu, (name, cell)
            if name == "m":
                assert summary(folder)["mps"]["gpu"] == gpu


def test_the_gpu_ray_assigns_is_resolved_to_the_one_nvml_lists():
    """Ray names a GPU as the node's CUDA_VISIBLE_DEVICES does: an index or a UUID."""
    listed = GpuInfo(nvml=True, devices=[GpuDevice(index=0, uuid="GPU-aaa"), GpuDevice(index=1, uuid="GPU-bbb")])
    assert assigned_gpu("GPU-bbb", listed) == 1 and assigned_gpu("1", listed) == 1
    assert assigned_gpu("3", GpuInfo(nvml=False, devices=[])) == 3  # no NVML: as given
    for name in ("GPU-ccc", "2"):
        with pytest.raises(RunFailure, match=f"the GPU assigned here, '{name}'"):
            assigned_gpu(name, listed)


def actor_pids() -> list[int]:
    return pids_running(b"ScenarioActor")


@pytest.mark.timeout(600)
def test_a_killed_driver_leaves_nothing_running_and_the_matrix_resumes(tmp_path, ray_cluster, external_servers):
    configs = [external(tmp_path, "a", external_servers[0]), external(tmp_path, "b", external_servers[1])]
    args = ["matrix", "--configs", *map(str, configs), "--concurrency", "1", "2", "3", "--duration", "3",
            "--ray", ray_cluster, "--shared-out", "--out", str(tmp_path / "m")]  # the workers write into --out
    index_path = tmp_path / "m" / "matrix.json"

    def complete_cells() -> int:
        try:
            return json.loads(index_path.read_text())["counts"]["complete"]
        except (OSError, ValueError):
            return 0

    driver = subprocess.Popen([sys.executable, "-m", "gpushare.cli", *args], stderr=subprocess.DEVNULL)
    wait_until(lambda: complete_cells() >= 1, 120)
    wait_until(lambda: len(actor_pids()) == 2, 30)
    driver.kill()
    driver.wait()
    wait_until(lambda: not actor_pids(), 60)  # Ray ends the actors of a driver that died
    # The workers write into --out: a cell an actor finished after the driver's last word is
    # complete on disk, not in the index, and resume skips it all the same.
    on_disk = sum(read_verdict(cell).complete for cell in (tmp_path / "m").glob("*/c*_rep1"))
    assert 1 <= complete_cells() <= on_disk < 6

    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    index = json.loads(index_path.read_text())
    assert index["counts"] == {"complete": 6 - on_disk, "skipped": on_disk, "failed": 0, "not_run": 0}
    assert len(index["invocations"]) == 2
    assert not actor_pids()


@pytest.mark.timeout(600)
def test_a_lost_worker_fails_only_its_scenarios_unfinished_cells(tmp_path, ray_cluster, external_servers):
    configs = [external(tmp_path, "a", external_servers[0]), external(tmp_path, "b", external_servers[1])]
    args = ["matrix", "--configs", *map(str, configs), "--concurrency", "1", "2", "--duration", "4",
            "--ray", ray_cluster, "--out", str(tmp_path / "m")]
    folders_before = set(Path(tempfile.gettempdir()).glob("gpushare-ray-*"))
    driver = subprocess.Popen([sys.executable, "-m", "gpushare.cli", *args], stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(actor_pids()) == 2, 60)

    def measuring() -> Path | None:
        """An actor's folder whose cell under way has finished requests on record."""
        for folder in set(Path(tempfile.gettempdir()).glob("gpushare-ray-*")) - folders_before:
            if any(len(f.read_text().splitlines()) > 2 for f in folder.glob("*/*/requests.csv")):
                return folder
        return None

    wait_until(measuring, 60)
    owner = json.loads((measuring() / "owner.json").read_text())["pid"]
    os.kill(owner, signal.SIGKILL)  # mid-cell, as a node going away does to its workers
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 1, stderr
    index = json.loads((tmp_path / "m" / "matrix.json").read_text())
    by_status = {}
    for cell in index["cells"]:
        by_status.setdefault(cell["status"], []).append(cell)
    (failed,) = by_status["failed"]  # the cell under way
    assert "lost its Ray worker or node" in failed["error"]
    later = [c for c in by_status.get("not_run", []) if c["scenario"] == failed["scenario"]]
    assert all("not begun" in c["error"] for c in later) and len(later) == (failed["cell"] == "c1_rep1")
    other = "b" if failed["scenario"] == "a" else "a"
    assert sorted(c["cell"] for c in by_status["complete"] if c["scenario"] == other) == ["c1_rep1", "c2_rep1"]
    # The lost actor's folder on its node came back (the cell under way as it stood) and is gone there.
    lost_cell = tmp_path / "m" / failed["scenario"] / failed["cell"]
    assert (lost_cell / "summary.json").exists() and not read_verdict(lost_cell).complete
    assert f"fetched from its lost worker's node into {tmp_path / 'm' / failed['scenario']}" in stderr
    assert set(Path(tempfile.gettempdir()).glob("gpushare-ray-*")) <= folders_before
    kept = (lost_cell / "requests.csv").read_bytes()

    proc = cli(*args)  # resume redoes what the lost worker did not hand back, keeping what it fetched
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "m" / "matrix.json").read_text())["counts"]["complete"] == 2
    assert (lost_cell.with_name(f"{failed['cell']}.attempt-1") / "requests.csv").read_bytes() == kept


def test_ray_without_ray_installed_says_how_to_install_it(tmp_path):
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no ray here')\n")
    config = launched(tmp_path, "a")
    proc = cli("matrix", "--configs", str(config), "--concurrency", "1", "--ray", "--out", str(tmp_path / "m"),
               env={**os.environ, "PYTHONPATH": f"{tmp_path / 'shim'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert proc.returncode == 2
    assert error_line(proc.stderr) == "error: --ray: Ray is not installed; install it with: pip install 'gpushare[cluster]'"
    assert not (tmp_path / "m").exists()


def test_a_ray_address_where_nothing_listens_is_one_line_naming_it(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = cli("matrix", "--configs", str(launched(tmp_path, "a")), "--concurrency", "1", "--ray", address,
               "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert error_line(proc.stderr).startswith(f"error: --ray: no Ray head answers at {address} (Connection refused)")
    assert time.monotonic() - started < 30 and not (tmp_path / "m").exists()


@pytest.mark.timeout(300)
def test_ray_local_leaves_no_session_folder_or_token_behind(tmp_path):
    """A cluster --ray local starts (here it has no GPU, so the matrix is refused) is ended with
    its session folder, and the token file it wrote into a home that had none is removed."""
    home = tmp_path / "home"
    home.mkdir()
    before = set(Path("/tmp").glob("gpushare-ray-local-*"))
    proc = cli("matrix", "--configs", str(launched(tmp_path, "a")), "--concurrency", "1", "--ray", "local",
               "--out", str(tmp_path / "m"), env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 2
    assert error_line(proc.stderr) == "error: --ray: the Ray cluster at local has no GPU (start its nodes with --num-gpus)"
    assert set(Path("/tmp").glob("gpushare-ray-local-*")) == before
    assert list(home.iterdir()) == []


def test_longest_scenarios_are_placed_first():
    """Start-ups count: a scenario of two servers goes before one of one with the same cells;
    longer cells go first; ties keep the order of --configs."""
    from gpushare.config import parse_config
    from gpushare.fleet import longest_first
    from gpushare.experiment.matrix_plan import Todo, plan_matrix

    def config(name, servers):
        return parse_config({"scenario": name, "sharing": {"mode": "timeslice"},
                             "servers": [{"name": f"s{i}"} for i in range(servers)]})

    configs = [config("one-a", 1), config("two", 2), config("one-b", 1)]
    plan = plan_matrix(configs, [1, 2], [], 1, Path("out"), duration_s=30)
    order = [p.config.scenario for p, _ in longest_first([(p, Todo(p.cells)) for p in plan])]
    assert order == ["two", "one-a", "one-b"]
    longer = plan_matrix([config("short", 1)], [1], [], 1, Path("out"), duration_s=30) + \
        plan_matrix([config("long", 1)], [1], [], 1, Path("out"), duration_s=300)
    assert [p.config.scenario for p, _ in longest_first([(p, Todo(p.cells)) for p in longer])] == ["long", "short"]
