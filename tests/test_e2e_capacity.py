"""End to end: `gpushare capacity` searches a tenant's SLO capacity on the real vLLM CPU server
with the embedded model, alone and beside a neighbour, one server start for every probe. A
reduced search (a loose target, short windows, two probes per search); the known answers are
in test_capacity.py, on the known-law server."""

import json

import pandas as pd
import pytest

from gpushare import cli
from gpushare.experiment.capacity import probe_name, Neighbours
from gpushare.measure.capacity_doc import read_capacity_doc
from helpers import alive, free_port, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CPU_SERVER = {
    "engine": "vllm", "args": ["--dtype=float32", "--enforce-eager", "--max-model-len=1024"],
    "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "ready_timeout_s": 600,
}


def test_a_reduced_capacity_search_on_real_vllm(tmp_path):
    tokens = {"kind": "synthetic", "input_tokens": 32, "output_tokens": 8}
    cfg = write_config(
        tmp_path / "cap.yaml", scenario="e2e-capacity", model="smollm2",
        servers=[{**CPU_SERVER, "name": "cpu-0", "port": free_port()}], sharing={"mode": "baseline"},
        api={"endpoint": "completions", "stream": True, "ignore_eos": True}, workload=tokens,
        tenants=[{"name": "chat", "servers": ["cpu-0"], "load": {"request_rate": 2, "duration_s": 5},
                  "slo": {"ttft": 2.0, "tpot": 0.5, "attainment": 0.8}},
                 {"name": "batch", "servers": ["cpu-0"], "load": {"concurrency": 1, "duration_s": 5}}],
        capacity={"tenant": "chat", "beside": {"batch": [1]}, "window_s": 4, "settle_s": 1, "budget": 2},
        out=str(tmp_path / "runs"))
    out = tmp_path / "cap"
    assert cli.main(["capacity", "--configs", str(cfg), "--out", str(out)]) == 0
    doc = read_capacity_doc(out)
    assert [row.beside for row in doc.rows] == ["", "batch=1"] and len(doc.probes) == 4
    index = json.loads((out / "matrix.json").read_text())
    assert index["counts"]["complete"] == 4
    assert len(index["invocations"]) == 1 and index["invocations"][0]["server_start_s"] > 0
    first = doc.probes[0]
    assert (first.beside, first.level, first.window) == ("", 2.0, 1)
    for probe in doc.probes:  # every probe re-derives from its requests.csv
        requests = pd.read_csv(f"{probe.run_dir}/requests.csv")
        mine = requests[(requests["tenant"] == "chat") & (requests["warmup"] == 0) & (requests["in_window"] == 1)]
        good = (mine["status"] == "ok") & (mine["ttft_s"] <= 2.0) & (mine["tpot_s"].fillna(0) <= 0.5)
        assert (probe.good, probe.total) == (int(good.sum()), len(mine)) and probe.total > 0
        assert set(requests["tenant"]) == ({"chat"} if not probe.beside else {"chat", "batch"})
    alone = doc.rows[0]
    feasible = [p.level for p in doc.probes if not p.beside and p.judged["0.8"] == "feasible"]
    assert alone.capacity == (max(feasible) if feasible else alone.capacity)
    second = doc.probes[1]
    assert second.level == (4.0 if first.judged["0.8"] == "feasible" else 1.0 if first.judged["0.8"] == "infeasible"
                            else 2.0)
    name = probe_name(Neighbours(), "request_rate", first.level, 0)
    pid = json.loads((out / "e2e-capacity" / name / "summary.json").read_text())["servers"][0]["pid"]
    assert not alive(pid)
