"""`gpushare interfere`: each tenant alone, then together, on the same servers; the comparison
is computed from the phases' own summaries. SSE test servers (the protocol's bookkeeping);
the real path is in test_e2e_shared_server.py."""

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


def test_interference_compares_each_tenant_alone_and_shared(tmp_path):
    out = tmp_path / "int"
    assert cli.main(["interfere", "--configs", str(config_file(tmp_path)), "--out", str(out)]) == 0
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
    scores = pd.read_csv(out / "interference_scores.csv").iloc[0]
    normalised = [phases["shared"]["tenants"][t]["output_throughput"] / phases[f"solo-{t}"]["tenants"][t]["output_throughput"]
                  for t in ("chat", "batch")]
    assert scores["stp"] == pytest.approx(sum(normalised))
    assert scores["fairness"] == pytest.approx(sum(normalised) ** 2 / (2 * sum(x * x for x in normalised)))
    doc = json.loads((out / "interference.json").read_text())
    steps = doc["scenarios"]["pair"]["by_step"]["chat"]
    assert steps["aggressor"] == "batch" and [s["level"] for s in steps["steps"]] == [0, 2, 4]
    # The one reader gives what the one writer wrote, every key.
    assert read_interference_doc(out / "interference.json").model_dump(mode="json", exclude_unset=True) == doc


def test_phases_salt_the_prefix_cache_per_phase(tmp_path):
    from gpushare.config import parse_config, read_config_file
    from gpushare.experiment.interference_protocol import plan_interference

    config = parse_config(read_config_file(config_file(tmp_path)))
    (scenario,) = plan_interference([config])
    salts = {cell.name: {t.name: t.api.extra_body["cache_salt"] for t in cell.config.resolved_tenants()}
             for cell in scenario.cells}
    assert salts == {"solo-chat": {"chat": "pair-solo-chat"}, "solo-batch": {"batch": "pair-solo-batch"},
                     "shared": {"chat": "pair-shared", "batch": "pair-shared"}}


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
