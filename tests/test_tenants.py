"""Tenants: several workloads share the servers in one run, each measured on its own, over
one common window. These use the SSE test server (the load generator's own behaviour); the
real path, on vLLM, is in test_e2e_shared_server.py."""

import json

import numpy as np
import pandas as pd
import pytest

from gpushare import cli
from helpers import SSE_SERVER, error_line, free_port, run_folder, summary, write_config

pytestmark = pytest.mark.timeout(120)


def server(name: str, token_delay: float = 0.004) -> dict:
    return {"name": name, "command": [*SSE_SERVER, "--token-delay", str(token_delay)], "port": free_port(),
            "ready_timeout_s": 30}


def two_tenants(tmp_path, **extra) -> dict:
    """chat: open loop with an SLO; batch: a closed-loop aggressor that steps 0 -> 2 -> 4."""
    doc = {
        "scenario": "pair",
        "servers": [server("chat-s"), server("batch-s")],
        "sharing": {"mode": "timeslice"},
        "workload": {"kind": "synthetic", "input_tokens": 8, "output_tokens": 4},
        "tenants": [
            {"name": "chat", "servers": ["chat-s"], "load": {"request_rate": 25, "duration_s": 2.4},
             "slo": {"ttft": 0.05}},
            {"name": "batch", "servers": ["batch-s"], "workload": {"kind": "synthetic", "input_tokens": 8,
                                                                   "output_tokens": 12},
             "load": {"steps": {"concurrency": [0, 2, 4], "step_s": 0.8}, "warmup_requests": 1}},
        ],
        "out": str(tmp_path / "runs"),
    }
    doc.update(extra)
    return doc


def run(tmp_path, doc: dict) -> int:
    cfg = write_config(tmp_path / "tenants.yaml", **doc)
    return cli.main(["run", "--config", str(cfg)])


def percentile_ms(seconds: pd.Series, q: float) -> float:
    return float(np.percentile(seconds.to_numpy(dtype=float) * 1000.0, q))


def test_every_per_tenant_number_comes_from_requests_csv(tmp_path):
    assert run(tmp_path, two_tenants(tmp_path)) == 0
    folder = run_folder(tmp_path / "runs")
    doc = summary(folder)
    assert doc["complete"] and set(doc["tenants"]) == {"chat", "batch"}
    requests = pd.read_csv(folder / "requests.csv")
    measured = requests[requests["in_window"] == 1]
    assert (requests.loc[requests["warmup"] == 1, "in_window"] == 0).all()

    for name, block in doc["tenants"].items():
        mine = measured[measured["tenant"] == name]
        ok = mine[mine["status"] == "ok"]
        assert block["completed"] == len(ok) > 0 and block["failed"] == len(mine) - len(ok)
        assert block["total_output_tokens"] == ok["output_tokens"].sum()
        span = (ok["end"].max() - mine["sent"].min())
        assert block["duration"] == pytest.approx(span, abs=2e-6)
        assert block["output_throughput"] == pytest.approx(ok["output_tokens"].sum() / span, rel=1e-4)
        for metric in ("ttft", "e2el"):
            for q in (50, 99):
                assert block[f"p{q}_{metric}_ms"] == pytest.approx(percentile_ms(ok[f"{metric}_s"], q), abs=2e-3)
        # Each tenant's requests go only to its own servers.
        assert set(mine["endpoint"]) == {f"{name}-s"}
    chat = measured[(measured["tenant"] == "chat") & (measured["status"] == "ok")]
    assert doc["tenants"]["chat"]["good_request_fraction"] == pytest.approx((chat["ttft_s"] <= 0.05).mean())
    assert doc["tenants"]["batch"].get("good_request_fraction") is None  # no SLO of its own
    # The aggregate is every tenant's measured requests together.
    assert doc["completed"] == (measured["status"] == "ok").sum()
    assert doc["num_prompts"] == len(measured)


def test_the_aggressor_follows_its_steps_and_every_tenant_is_binned_by_them(tmp_path):
    assert run(tmp_path, two_tenants(tmp_path)) == 0
    folder = run_folder(tmp_path / "runs")
    doc = summary(folder)
    requests = pd.read_csv(folder / "requests.csv")
    measured = requests[requests["in_window"] == 1]
    start = measured["scheduled"].min()
    batch = measured[measured["tenant"] == "batch"]
    # Nothing in step 0 (level 0); never more in flight than the step's level.
    assert (batch["step"] >= 1).all()
    for level, (_, part) in zip((2, 4), batch.groupby("step")):
        inside = [((part["sent"] <= t) & (part["end"] > t)).sum()
                  for t in np.linspace(part["sent"].min(), part["sent"].max(), 50)]
        assert max(inside) <= level
    by_step = doc["tenants"]["chat"]["by_step"]
    assert by_step["tenant"] == "batch" and [s["level"] for s in by_step["steps"]] == [0, 2, 4]
    chat = measured[measured["tenant"] == "chat"]
    for step in by_step["steps"]:
        part = chat[chat["step"] == step["step"]]
        assert step["completed"] == (part["status"] == "ok").sum() > 0
        expected = ((part["scheduled"] - start) // 0.8).clip(upper=2)
        assert (expected == step["step"]).all()


def test_one_server_named_by_both_tenants(tmp_path):
    doc = two_tenants(tmp_path, servers=[server("shared")], sharing={"mode": "baseline"})
    for tenant in doc["tenants"]:
        tenant["servers"] = ["shared"]
    assert run(tmp_path, doc) == 0
    folder = run_folder(tmp_path / "runs")
    requests = pd.read_csv(folder / "requests.csv")
    assert set(requests["endpoint"]) == {"shared"} and set(requests["tenant"]) == {"chat", "batch"}
    chunks = pd.read_csv(folder / "chunks.csv")
    # A request is (tenant, index): each tenant numbers its own.
    tokens = chunks.groupby(["tenant", "index"])["tokens"].sum()
    ok = requests[requests["status"] == "ok"].set_index(["tenant", "index"])["output_tokens"]
    assert tokens.loc[ok.index].tolist() == ok.tolist()


def test_forty_tenants_get_a_bounded_folder_name_and_every_one_is_in_the_summary(tmp_path):
    names = [f"tenant-number-{i:02d}" for i in range(40)]
    doc = two_tenants(tmp_path, servers=[server("shared")], sharing={"mode": "baseline"})
    doc["tenants"] = [{"name": name, "servers": ["shared"], "load": {"concurrency": 1, "duration_s": 0.5,
                                                                     "warmup_requests": 0}} for name in names]
    assert run(tmp_path, doc) == 0
    folder = run_folder(tmp_path / "runs")
    label = folder.name.split("_", 1)[1]
    assert len(label) == 100 and label.startswith("pair_tenant-number-00-c1+tenant-number-01-c1+")
    assert sorted(summary(folder)["tenants"]) == names


def test_requests_after_the_first_tenant_stops_are_kept_and_flagged(tmp_path):
    doc = two_tenants(tmp_path)
    doc["tenants"][0]["load"]["duration_s"] = 1.2  # chat stops halfway through batch's schedule
    assert run(tmp_path, doc) == 0
    folder = run_folder(tmp_path / "runs")
    requests = pd.read_csv(folder / "requests.csv")
    late = requests[(requests["warmup"] == 0) & (requests["in_window"] == 0)]
    assert len(late) > 0 and set(late["tenant"]) == {"batch"}
    # The window's start is not a request's, so compare with the requests kept in it: every late
    # one was scheduled after all of them.
    kept = requests[requests["in_window"] == 1]
    assert late["scheduled"].min() > kept["scheduled"].max()
    assert kept["scheduled"].max() - kept["scheduled"].min() <= 1.2
    assert summary(folder)["tenants"]["batch"]["out_of_window"] == len(late)


def test_a_scenario_without_tenants_keeps_its_summary_shape(tmp_path):
    doc = two_tenants(tmp_path, servers=[server("only")], sharing={"mode": "baseline"},
                      load={"concurrency": 2, "n_requests": 6, "warmup_requests": 1})
    del doc["tenants"]
    assert run(tmp_path, doc) == 0
    folder = run_folder(tmp_path / "runs")
    result = summary(folder)
    assert "tenants" not in result and result["completed"] == 6 and result["out_of_window"] == 0
    requests = pd.read_csv(folder / "requests.csv")
    assert requests["tenant"].isna().all() and requests["step"].isna().all()
    assert folder.name.endswith("_pair_c2")


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["tenants"][0].update(servers=["nowhere"]),
     "config: tenants.0.servers: no server is named 'nowhere' (servers: chat-s, batch-s)"),
    (lambda d: d["tenants"].pop(), "config: servers: no tenant sends to batch-s"),
    (lambda d: d["tenants"][1].update(name="chat"), "config: tenants: two tenants share a name (chat, chat)"),
    (lambda d: d["tenants"][1]["load"]["steps"].update(concurrency=[0, 0]),
     "config: tenants.1.load.steps: at least one level must be greater than 0"),
    (lambda d: d["tenants"][1]["load"]["steps"].update(request_rate=[1.0]),
     "config: tenants.1.load.steps: give either concurrency or request_rate levels"),
    (lambda d: d["tenants"][1]["load"].update(duration_s=5),
     "config: tenants.1.load: duration_s: not with steps, which set it (to 2.4)"),
    (lambda d: d["tenants"][1]["load"].update(n_requests=5),
     "config: tenants.1.load: n_requests: not with steps, whose length bounds the window"),
    (lambda d: d["tenants"][0].update(load={"concurrency": 2, "n_requests": 10}),
     "config: tenants.0.load: tenants that load together share one window bounded by time; give duration_s or steps"),
    (lambda d: d.update(active_tenants=["nobody"]),
     "config: active_tenants: no tenant is named 'nobody' (tenants: chat, batch)"),
    (lambda d: d["tenants"][0].update(name="t" * 65),
     f"config: tenants.0.name: String should have at most 64 characters (got '{'t' * 65}')"),
    (lambda d: d.update(scenario="s" * 65),
     f"config: scenario: String should have at most 64 characters (got '{'s' * 65}')"),
    (lambda d: d.update(active_tenants=[]),
     "config: active_tenants: empty; name at least one tenant, or leave it out for all of them"),
    (lambda d: d.update(active_tenants=["chat", "chat"]),
     "config: active_tenants: a tenant is named twice (chat, chat)"),
    (lambda d: d["tenants"][0].update(servers=["chat-s", "chat-s", "batch-s"]),
     "config: tenants.0.servers: a server is named twice (chat-s, chat-s, batch-s)"),
])
def test_bad_tenants_are_one_line_exit_2(tmp_path, capsys, change, expected):
    doc = two_tenants(tmp_path)
    change(doc)
    assert run(tmp_path, doc) == 2
    assert error_line(capsys.readouterr().err) == f"error: {expected}"
    assert not (tmp_path / "runs").exists()


def test_summary_tenant_blocks_are_json_numbers_not_strings(tmp_path):
    """What pandas users get: the per-tenant blocks flatten into one frame of numbers."""
    assert run(tmp_path, two_tenants(tmp_path)) == 0
    doc = json.loads((run_folder(tmp_path / "runs") / "summary.json").read_text())
    frame = pd.DataFrame.from_dict(doc["tenants"], orient="index")
    assert frame.loc["chat", "p99_ttft_ms"] > 0 and frame["completed"].dtype.kind == "i"


def test_an_open_loop_step_schedule_sends_at_each_steps_rate(tmp_path):
    doc = two_tenants(tmp_path, servers=[server("only")], sharing={"mode": "baseline"},
                      load={"steps": {"request_rate": [0, 30, 90], "step_s": 1.0}, "warmup_requests": 1})
    del doc["tenants"]
    assert run(tmp_path, doc) == 0
    folder = run_folder(tmp_path / "runs")
    requests = pd.read_csv(folder / "requests.csv")
    measured = requests[requests["warmup"] == 0]
    counts = measured.groupby("step").size()
    assert 0 not in counts.index  # a rate of 0 sends nothing in its step
    assert 15 <= counts[1] <= 45 and 60 <= counts[2] <= 120  # Poisson counts around 30 and 90
    assert summary(folder)["duration"] > 1.0  # first send to last end spans both busy steps
    assert folder.name.endswith("_pair_r0-30-90")


def test_analysis_reads_a_tenant_run_as_one_row_per_tenant(tmp_path):
    from gpushare.reporting.run_tables import read_runs, request_table

    assert run(tmp_path, two_tenants(tmp_path)) == 0
    folder = run_folder(tmp_path / "runs")
    doc = summary(folder)
    runs = read_runs([folder]).runs.set_index("tenant")
    assert list(runs.loc[["chat", "batch"], "scenario"]) == ["pair[chat+batch]:chat", "pair[chat+batch]:batch"]
    assert runs.loc["chat", "load_mode"] == "open_loop" and runs.loc["chat", "load"] == 25
    assert runs.loc["batch", "load_mode"] == "steps" and runs.loc["batch", "load"] == 4  # the schedule's peak
    for name in ("chat", "batch"):
        assert runs.loc[name, "completed"] == doc["tenants"][name]["completed"]
        assert runs.loc[name, "p99_ttft_ms"] == pytest.approx(doc["tenants"][name]["p99_ttft_ms"])
    requests = request_table(runs.reset_index())
    assert requests.groupby("scenario").size().to_dict() == {
        f"pair[chat+batch]:{name}": doc["tenants"][name]["completed"] for name in ("chat", "batch")}


def test_a_matrix_varies_the_tenant_that_takes_the_scenarios_load(tmp_path):
    """The aggressor's level as the matrix's axis: the tenant without a load of its own takes
    the scenario's, which each cell sets; the others keep theirs."""
    doc = two_tenants(tmp_path, load={"concurrency": 2, "duration_s": 2.4, "warmup_requests": 1})
    del doc["tenants"][1]["load"]
    cfg = write_config(tmp_path / "pair.yaml", **doc)
    out = tmp_path / "m"
    assert cli.main(["matrix", "--configs", str(cfg), "--concurrency", "1", "3", "--duration", "1.2",
                     "--out", str(out)]) == 0
    for level in (1, 3):
        blocks = summary(out / "pair" / f"c{level}_rep1")["tenants"]
        assert blocks["batch"]["load"]["concurrency"] == level and blocks["batch"]["load"]["duration_s"] == 1.2
        assert blocks["chat"]["load"]["request_rate"] == 25 and blocks["chat"]["completed"] > 0
