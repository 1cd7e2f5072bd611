"""`gpushare interfere`: each tenant alone, then together, on the same servers, and with
--dedicated each tenant alone on its own servers; the comparison is computed from the phases'
own summaries and request logs. SSE test servers (the protocol's bookkeeping); the real path
is in test_e2e_shared_server.py."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from gpushare import cli
from gpushare.measure.interference_doc import read_interference_doc
from helpers import alive, error_line, summary, write_config
from test_tenants import two_tenants

pytestmark = pytest.mark.timeout(180)


def config_file(tmp_path, name="pair", **extra):
    doc = two_tenants(tmp_path, scenario=name, **extra)
    # Prompts of random lengths: the same seed must give a tenant the same ones in every phase.
    doc["workload"]["input_tokens"] = {"dist": "uniform", "low": 4, "high": 40}
    return write_config(tmp_path / f"{name}.yaml", **doc)


def common_throughput(folder):
    """Output tok/s over [latest first send, earliest last completion] of the tenants' measured
    requests, from requests.csv and chunks.csv alone."""
    requests = pd.read_csv(folder / "requests.csv")
    measured = requests[(requests["in_window"] == 1) & (requests["warmup"] == 0) & requests["end"].notna()]
    spans = measured.groupby("tenant").agg(start=("sent", "min"), end=("end", "max"))
    start, end = spans["start"].max(), spans["end"].min()
    chunks = pd.read_csv(folder / "chunks.csv").merge(requests[["tenant", "index", "warmup"]], on=["tenant", "index"])
    inside = chunks[(chunks["warmup"] == 0) & (chunks["t"] >= start) & (chunks["t"] <= end)]
    return inside["tokens"].sum() / (end - start), end - start


def test_interference_compares_each_tenant_alone_shared_and_dedicated(tmp_path):
    out = tmp_path / "int"
    dedicated = config_file(tmp_path, "alone")  # the same tenants, on servers of their own
    assert cli.main(["interfere", "--configs", str(config_file(tmp_path)), "--dedicated", str(dedicated),
                     "--out", str(out)]) == 0
    phases = {name: summary(out / "pair" / name) for name in ("solo-chat", "solo-batch", "shared")}
    assert all(doc["complete"] for doc in phases.values())
    # A solo phase loads only its tenant; the other's server is up, idle.
    assert set(phases["solo-chat"]["tenants"]) == {"chat"} and set(phases["shared"]["tenants"]) == {"chat", "batch"}
    assert len(phases["solo-chat"]["servers"]) == 2
    solo_requests = pd.read_csv(out / "pair" / "solo-chat" / "requests.csv")
    shared_requests = pd.read_csv(out / "pair" / "shared" / "requests.csv")
    assert set(solo_requests["tenant"]) == {"chat"}
    # Same tenant, same seed: the same prompts in the same order, alone and shared.
    solo_lengths = solo_requests.sort_values("index")["input_tokens"].tolist()
    shared_lengths = shared_requests[shared_requests["tenant"] == "chat"].sort_values("index")["input_tokens"].tolist()
    n = min(len(solo_lengths), len(shared_lengths))
    assert n > 20 and solo_lengths[:n] == shared_lengths[:n]

    table = pd.read_csv(out / "interference.csv")
    assert set(table["tenant"]) == {"chat", "batch"} and (table["scenario"] == "pair").all()
    for _, row in table.iterrows():
        solo = phases[f"solo-{row['tenant']}"]["tenants"][row["tenant"]].get(row["metric"])
        shared = phases["shared"]["tenants"][row["tenant"]].get(row["metric"])
        if solo is None:
            assert pd.isna(row["solo"]) and pd.isna(row["slowdown"])
            continue
        assert row["solo"] == pytest.approx(solo) and row["shared"] == pytest.approx(shared)
        assert row["slowdown"] == pytest.approx(shared / solo)

    # Each tenant alone with only its own servers: the dedicated reference.
    alone = {t: summary(out / f"alone-{t}" / "dedicated") for t in ("chat", "batch")}
    assert all(doc["complete"] for doc in alone.values())
    assert [s["name"] for s in alone["chat"]["servers"]] == ["chat-s"] and set(alone["chat"]["tenants"]) == {"chat"}

    # chat, an open loop with an SLO, on its good requests per second of its window (the same
    # window in every phase); batch, a closed loop, on output tok/s.
    def scored(doc: dict, tenant: str) -> float:
        block = doc["tenants"][tenant]
        return block["output_throughput"] if tenant == "batch" else block["good_requests"] / block["load"]["duration_s"]

    tenants = pd.read_csv(out / "interference_tenants.csv").set_index("tenant")
    assert tenants["scored_on"].to_dict() == {"chat": "goodput", "batch": "throughput"}
    kept = {}
    for tenant in ("chat", "batch"):
        solo, shared = scored(phases[f"solo-{tenant}"], tenant), scored(phases["shared"], tenant)
        own = scored(alone[tenant], tenant)
        row = tenants.loc[tenant]
        assert (row["solo"], row["shared"], row["dedicated"]) == pytest.approx((solo, shared, own))
        assert row["kept"] == pytest.approx(shared / solo) and row["kept_vs_dedicated"] == pytest.approx(shared / own)
        kept[tenant] = (shared / solo, shared / own)
    scores = pd.read_csv(out / "interference_scores.csv").iloc[0]
    for suffix, i in (("", 0), ("_vs_dedicated", 1)):
        values = [k[i] for k in kept.values()]
        assert scores[f"stp{suffix}"] == pytest.approx(sum(values))
        assert scores[f"fairness{suffix}"] == pytest.approx(sum(values) ** 2 / (2 * sum(x * x for x in values)))
    rate, interval = common_throughput(out / "pair" / "shared")
    assert scores["common_output_throughput"] == pytest.approx(rate) and scores["token_times"] == "chunks"
    assert scores["common_interval_s"] == pytest.approx(interval) and interval < phases["shared"]["duration"]

    doc = json.loads((out / "interference.json").read_text())
    steps = doc["scenarios"]["pair"]["by_step"]["chat"]
    assert steps["aggressor"] == "batch" and [s["level"] for s in steps["steps"]] == [0, 2, 4]
    # chat against its solo value at each level batch loaded, not over batch's idle step
    levels = pd.read_csv(out / "interference_levels.csv")
    assert set(levels["tenant"]) == {"chat"} and set(levels["aggressor"]) == {"batch"}
    ttft = levels[levels["metric"] == "p99_ttft_ms"]
    assert ttft["level"].tolist() == [2, 4] and ttft["worst"].sum() == 1
    assert ttft.loc[ttft["worst"], "slowdown"].iloc[0] == ttft["slowdown"].max()
    solo_ttft = phases["solo-chat"]["tenants"]["chat"]["p99_ttft_ms"]
    assert ttft["slowdown"].tolist() == pytest.approx([s["p99_ttft_ms"] / solo_ttft for s in steps["steps"][1:]])
    assert doc["dedicated"]["chat"] == {"scenario": "alone-chat", "run_dir": str(out / "alone-chat" / "dedicated"),
                                        "status": "complete"}
    # The one reader gives what the one writer wrote, every key.
    assert read_interference_doc(out / "interference.json").model_dump(mode="json", exclude_unset=True) == doc


def test_phases_salt_the_prefix_cache_per_phase(tmp_path):
    from gpushare.config import parse_config
    from gpushare.config_file import read_config_file
    from gpushare.experiment.interference_protocol import plan_interference

    config = parse_config(read_config_file(config_file(tmp_path)))
    plan = plan_interference([config], parse_config(read_config_file(config_file(tmp_path, "alone"))))
    salts = {(scenario.config.scenario, cell.name): {t.name: t.api.extra_body["cache_salt"]
                                                     for t in cell.config.resolved_tenants()}
             for scenario in plan.plans for cell in scenario.cells}
    assert salts == {("pair", "solo-chat"): {"chat": "pair-solo-chat"}, ("pair", "solo-batch"): {"batch": "pair-solo-batch"},
                     ("pair", "shared"): {"chat": "pair-shared", "batch": "pair-shared"},
                     ("alone-chat", "dedicated"): {"chat": "alone-chat-dedicated"},
                     ("alone-batch", "dedicated"): {"batch": "alone-batch-dedicated"}}


def test_a_users_cache_salt_is_combined_with_each_phases(tmp_path):
    """The user's cache_salt keeps their runs apart, the phase's keeps the phases apart: every
    body each server received carries both, so no phase reads another's prefix cache."""
    doc = two_tenants(tmp_path, api={"extra_body": {"cache_salt": "mine"}})
    bodies = {}
    for server in doc["servers"]:
        bodies[server["name"]] = tmp_path / f"{server['name']}.jsonl"
        server["command"] = [*server["command"], "--record-bodies", str(bodies[server["name"]])]
    cfg = write_config(tmp_path / "salted.yaml", **doc)
    out = tmp_path / "int"
    assert cli.main(["interfere", "--configs", str(cfg), "--out", str(out)]) == 0
    received = {name: [json.loads(line)["cache_salt"] for line in path.read_text().splitlines()]
                for name, path in bodies.items()}
    assert set(received["chat-s"]) == {"mine-pair-solo-chat", "mine-pair-shared"}
    assert set(received["batch-s"]) == {"mine-pair-solo-batch", "mine-pair-shared"}
    sent = sum(len(pd.read_csv(out / "pair" / phase / "requests.csv")) for phase in ("solo-chat", "solo-batch", "shared"))
    assert sum(map(len, received.values())) >= sent > 0  # every request was seen (warm-ups add more)

    doc["api"] = {"extra_body": {"cache_salt": 7}}
    cfg = write_config(tmp_path / "bad-salt.yaml", **doc)
    assert cli.main(["interfere", "--configs", str(cfg), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_interference_needs_two_tenants(tmp_path, capsys):
    doc = two_tenants(tmp_path)
    doc["tenants"] = doc["tenants"][:1]
    doc["servers"] = doc["servers"][:1]
    doc["sharing"] = {"mode": "baseline"}
    cfg = write_config(tmp_path / "one.yaml", **doc)
    assert cli.main(["interfere", "--configs", str(cfg), "--out", str(tmp_path / "int")]) == 2
    assert error_line(capsys.readouterr().err) == (
        "error: --configs: scenario pair has 1 tenant(s); interference needs two or more (tenants:)")


def _dedicated_without_batch(doc):
    doc["tenants"], doc["servers"] = doc["tenants"][:1], doc["servers"][:1]


def _dedicated_with_another_load(doc):
    doc["tenants"][0]["load"]["request_rate"] = 10


def _dedicated_without_tenants(doc):
    del doc["tenants"]
    doc["servers"], doc["sharing"] = doc["servers"][:1], {"mode": "baseline"}


@pytest.mark.parametrize("edit, scenario, expected", [
    (_dedicated_without_batch, "alone",
     "error: --dedicated: scenario alone has no tenant batch, which scenario pair has (its tenants: chat)"),
    (_dedicated_with_another_load, "alone", "error: --dedicated: scenario alone: tenant chat differs from scenario "
                                            "pair's in load; its dedicated run must send the same requests"),
    (_dedicated_without_tenants, "alone", "error: --dedicated: scenario alone has no tenants (tenants:); it must hold "
                                          "the tenants of --configs"),
    (None, "pair", "error: --dedicated: scenario name pair-chat (the reference narrowed to one tenant) is also one "
                   "of --configs; rename either scenario"),
    (None, None, "error: --dedicated: cannot read {missing}: No such file or directory"),
])
def test_a_bad_dedicated_reference_is_one_line_exit_2(tmp_path, capsys, edit, scenario, expected):
    configs = [config_file(tmp_path, "pair"), config_file(tmp_path, "pair-chat")]
    reference = tmp_path / "missing.yaml"
    if scenario is not None:
        doc = two_tenants(tmp_path, scenario=scenario)
        doc["workload"]["input_tokens"] = {"dist": "uniform", "low": 4, "high": 40}
        if edit is not None:
            edit(doc)
        reference = write_config(tmp_path / "reference.yaml", **doc)
    out = tmp_path / "int"
    args = ["interfere", "--configs", *map(str, configs[:1] if edit else configs), "--dedicated", str(reference)]
    assert cli.main([*args, "--out", str(out)]) == 2
    assert error_line(capsys.readouterr().err) == expected.format(missing=reference)
    assert not out.exists()


def test_ctrl_c_keeps_finished_phases_and_a_rerun_completes(tmp_path):
    cfg = config_file(tmp_path)
    out = tmp_path / "int"
    args = [sys.executable, "-m", "gpushare.cli", "interfere", "--configs", str(cfg), "--out", str(out)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "pair" / "solo-batch" / "requests.csv").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # inside solo-batch's window
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    cells = {c["cell"]: c for c in json.loads((out / "matrix.json").read_text())["cells"]}
    assert cells["solo-chat"]["status"] == "complete"
    assert cells["solo-batch"]["status"] == "failed" and "interrupted" in cells["solo-batch"]["error"]
    assert cells["shared"]["status"] == "not_run"
    entry = json.loads((out / "interference.json").read_text())["scenarios"]["pair"]
    assert entry["complete"] is False and "solo-batch" in entry["error"] and "tenants" not in entry
    pids = [s["pid"] for s in summary(out / "pair" / "solo-chat")["servers"]]
    assert pids and not any(alive(pid) for pid in pids)

    interrupted = (out / "pair" / "solo-batch" / "requests.csv").read_bytes()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    index = json.loads((out / "matrix.json").read_text())
    cells = {c["cell"]: c for c in index["cells"]}
    assert [cells[c]["status"] for c in ("solo-chat", "solo-batch", "shared")] == ["skipped", "complete", "complete"]
    assert json.loads((out / "interference.json").read_text())["scenarios"]["pair"]["complete"] is True
    # The interrupted attempt's finished requests are kept beside the phase, and said so.
    attempt = out / "pair" / "solo-batch.attempt-1"
    assert (attempt / "requests.csv").read_bytes() == interrupted and interrupted.count(b"\n") > 1
    assert [(a["cell"], a["run_dir"]) for a in index["superseded"]] == [("solo-batch", str(attempt))]
    assert f"is kept in {attempt}" in rerun.stderr.replace("\n", "")


def test_a_tenant_changed_since_the_phases_were_measured_is_refused(tmp_path, capsys):
    cfg = config_file(tmp_path)
    out = tmp_path / "int"
    assert cli.main(["interfere", "--configs", str(cfg), "--out", str(out)]) == 0
    table = (out / "interference.csv").read_text()
    doc = two_tenants(tmp_path)
    doc["tenants"][0]["load"]["request_rate"] = 20
    write_config(cfg, **{**doc, "workload": {**doc["workload"], "input_tokens": {"dist": "uniform", "low": 4,
                                                                                  "high": 40}}})
    capsys.readouterr()
    assert cli.main(["interfere", "--configs", str(cfg), "--out", str(out)]) == 2
    assert error_line(capsys.readouterr().err).startswith(
        f"error: --out {out}: 3 complete cell(s) were measured under other settings than planned now: "
        "pair/solo-chat, pair/solo-batch, pair/shared; give --redo-changed")
    assert (out / "interference.csv").read_text() == table


def test_a_server_that_dies_in_one_phase_is_reported_and_earlier_phases_stand(tmp_path):
    import os

    cfg = config_file(tmp_path)
    out = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "interfere", "--configs", str(cfg), "--out", str(out)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "pair" / "solo-batch" / "requests.csv").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # inside solo-batch's window
    started = json.loads((out / "pair" / "processes.json").read_text())
    batch = next(p for p in started if p["name"] == "batch-s")
    os.kill(batch["pid"], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 1, stderr
    cells = {c["cell"]: c for c in json.loads((out / "matrix.json").read_text())["cells"]}
    assert cells["solo-chat"]["status"] == "complete"
    assert cells["solo-batch"]["status"] == "failed" and "server batch-s exited" in cells["solo-batch"]["error"]
    assert cells["shared"]["status"] == "failed" and "batch-s" in cells["shared"]["error"]
    assert summary(out / "pair" / "solo-chat")["complete"] is True  # the finished phase stands
    entry = json.loads((out / "interference.json").read_text())["scenarios"]["pair"]
    assert entry["complete"] is False and entry["phases"]["solo-chat"]["status"] == "complete"
    assert not any(alive(p["pid"]) for p in started)


@pytest.mark.parametrize("args, expected", [
    ([], "error: interfere: the following arguments are required: --configs"),
    (["--configs"], "error: --configs: expected at least one argument"),
    (["--configs", "a.yaml", "--repeats", "2"], "error: interfere: unknown arguments --repeats 2"),
])
def test_bad_interfere_flags_are_one_line_exit_2(capsys, args, expected):
    assert cli.main(["interfere", *args]) == 2
    assert capsys.readouterr().err.strip() == expected
