"""End to end: `gpushare run` starts the real vLLM CPU server with the embedded model.

These are slow (each starts vLLM, ~30-40 s on two cores); they are the product's real path.
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

from gpushare.servers import group_members
from helpers import alive, free_port, run_folder, summary, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CPU_SERVER = {
    "engine": "vllm",
    "args": ["--dtype=float32", "--enforce-eager", "--max-model-len=1024"],
    "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
    "ready_timeout_s": 600,
}


def scenario(tmp_path: Path, name: str, **sections) -> Path:
    server = {**CPU_SERVER, "name": "cpu-0", "port": free_port()}
    return write_config(tmp_path / f"{name}.yaml", scenario=name, model="smollm2", servers=[server],
                        out=str(tmp_path / "runs"), **sections)


def test_quick_run_on_real_vllm(tmp_path):
    cfg = scenario(
        tmp_path, "e2e",
        workload={"kind": "synthetic", "input_tokens": 32, "output_tokens": 16},
        load={"concurrency": 4, "n_requests": 24, "warmup_requests": 2},
    )
    proc = subprocess.run([sys.executable, "-m", "gpushare.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_folder(tmp_path / "runs")
    for name in ("config.yaml", "env.json", "requests.csv", "chunks.csv", "summary.json", "server-0.log", "gpu.csv"):
        assert (folder / name).is_file(), name
    doc = summary(folder)
    assert doc["complete"] and doc["completed"] == 24 and doc["failed"] == 0

    requests = pd.read_csv(folder / "requests.csv")
    measured = requests[requests["warmup"] == 0]
    assert len(requests) == 26 and len(measured) == 24
    assert (requests["status"] == "ok").all() and (requests["usage_reported"] == 1).all()
    assert (measured["output_tokens"] == 16).all()  # ignore_eos: exactly max_tokens
    assert measured["output_tokens"].sum() == doc["total_output_tokens"] == 24 * 16
    assert measured["input_tokens"].sum() == doc["total_input_tokens"]
    # The server's own counters over the measured window agree with the client's totals.
    counted = doc["server_counters"]["cpu-0"]
    assert counted["generation_tokens"] == doc["total_output_tokens"]
    assert counted["prompt_tokens"] == doc["total_input_tokens"]
    assert counted["requests_finished"] == 24
    chunks = pd.read_csv(folder / "chunks.csv")
    assert chunks[chunks["index"].isin(measured["index"])]["tokens"].sum() == 24 * 16
    assert 0 < doc["p50_ttft_ms"] <= doc["p99_ttft_ms"] < doc["p99_e2el_ms"]
    assert doc["output_throughput"] > 0

    env = json.loads((folder / "env.json").read_text())
    argv = env["servers"][0]["argv"]
    assert "vllm.entrypoints.openai.api_server" in argv and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert env["packages"]["vllm-cpu"] == "0.32.0"
    assert "Uvicorn running" in (folder / "server-0.log").read_text() or "Application startup complete" in (folder / "server-0.log").read_text()

    pid = doc["servers"][0]["pid"]
    assert not alive(pid) and group_members(pid) == []


def test_server_killed_mid_run_on_real_vllm(tmp_path):
    """Chat endpoint, open loop; the server is killed mid-run: the run records it and stops cleanly."""
    cfg = scenario(
        tmp_path, "killed",
        workload={"kind": "synthetic", "input_tokens": 16, "output_tokens": 64},
        api={"endpoint": "chat"},
        load={"request_rate": 2.0, "n_requests": 400, "warmup_requests": 1},
    )
    proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "run", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    log = None
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list((tmp_path / "runs").glob("*/server-0.log"))
        if logs and "Application startup complete" in logs[0].read_text(errors="replace"):
            log = logs[0]
            break
        time.sleep(1)
    assert log is not None, proc.stderr.read() if proc.poll() is not None else "server did not start"
    time.sleep(15)  # warm-up, then some measured requests
    server_pid = int(next(line for line in log.read_text().splitlines() if "APIServer pid=" in line)
                     .split("APIServer pid=")[1].split(")")[0])
    members = group_members(server_pid)
    assert len(members) >= 2  # API server and engine core
    os.kill(server_pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("error: server cpu-0 exited with code -9 during the run")
    doc = summary(run_folder(tmp_path / "runs"))
    assert doc["complete"] is False and doc["completed"] > 0
    assert doc["completed"] + doc["failed"] == doc["num_prompts"] < 400
    assert not any(alive(p) for p in members)


def test_matrix_on_real_vllm_starts_the_server_once(tmp_path):
    cfg = scenario(
        tmp_path, "m",
        workload={"kind": "synthetic", "input_tokens": 300, "output_tokens": 8},
        load={"concurrency": 1, "n_requests": 6, "warmup_requests": 1},
    )
    out = tmp_path / "matrix"
    proc = subprocess.run([sys.executable, "-m", "gpushare.cli", "matrix", "--configs", str(cfg),
                           "--concurrency", "1", "3", "--out", str(out)], capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((out / "matrix.json").read_text())
    assert index["counts"]["complete"] == 2
    docs = [summary(out / "m" / cell) for cell in ("c1_rep1", "c3_rep1")]
    assert docs[0]["servers"][0]["pid"] == docs[1]["servers"][0]["pid"]
    for doc in docs:
        counted = doc["server_counters"]["cpu-0"]
        assert doc["completed"] == 6 and counted["generation_tokens"] == 48
        # Prompts long enough for vLLM's prefix cache, none found there: each cell sends its own.
        assert counted["prefix_cache_queries"] == doc["total_input_tokens"] > 6 * 256
        assert counted["prefix_cache_hits"] == 0
    pid = docs[0]["servers"][0]["pid"]
    assert not alive(pid) and group_members(pid) == []
