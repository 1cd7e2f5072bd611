"""`gpushare capacity`: the searches' probes are cells of a plan, run by the matrix's executors.
These use the SSE test server and the known-law server (our own logic against known answers);
the real path, on vLLM, is in test_e2e.py."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gpushare import cli
from gpushare.config import parse_config
from gpushare.config import CapacityConfig
from gpushare.experiment.capacity import Neighbours, probe_config
from gpushare.measure.capacity_doc import read_capacity_doc
from gpushare.measure.capacity_search import NextProbe
from helpers import error_line, free_port, write_config
from law_server import capacity_in_concurrency
from test_tenants import two_tenants

pytestmark = pytest.mark.timeout(300)


def pair(tmp_path, **extra) -> dict:
    """chat: an open loop with a TTFT bound; batch: a closed loop beside it."""
    doc = two_tenants(tmp_path, **extra)
    doc["tenants"][0]["load"] = {"request_rate": 10, "duration_s": 2}
    doc["tenants"][1]["load"] = {"concurrency": 2, "duration_s": 2}
    return doc


@pytest.mark.parametrize("args, doc_change, expected", [
    (["--tenant", "batch"], None, "--tenant: batch has no SLO in scenario pair; give it one (tenants.N.slo, or the "
                                  "scenario's slo) to search its capacity under"),
    (["--tenant", "nobody"], None, "--tenant: scenario pair has no tenant named 'nobody' (tenants: chat, batch)"),
    (["--tenant", "chat", "--beside", "other=2"], None,
     "--beside: scenario pair has no tenant named 'other' (tenants: chat, batch)"),
    (["--tenant", "chat", "--beside", "batch=2,x"], None, "--beside: batch's level 'x' is not a number > 0 (in 'batch=2,x')"),
    (["--tenant", "chat", "--beside", "batch=1.5"], None,
     "--beside: batch runs a closed loop; its level 1.5 is a concurrency, a whole number"),
    (["--tenant", "chat", "--beside", "chat=2"], None, "--beside: chat is the tenant searched; name one of its neighbours"),
    (["--tenant", "chat", "--beside", "batch"], None, "--beside: expected NAME=L1,L2,... (a neighbour's levels), not 'batch'"),
    (["--tenant", "chat", "--target", "1"], None,
     "--target: attainment targets must be in (0, 1): a target of 1 no finite window proves"),
    (["--tenant", "chat", "--budget", "1"], None, "--budget: probes per search, at least 2 (one each side of the capacity)"),
    (["--tenant", "chat", "--window", "0"], None, "--window: must be a finite number greater than 0"),
    (["--tenant", "chat", "--start", "9", "--ceiling", "4"], None, "--start: 9 is above --ceiling 4"),
    (["--tenant", "chat"], {"active_tenants": ["chat"]},
     "--configs: scenario pair sets active_tenants; the search chooses them"),
    (["--tenant", "chat"], {"tenants": None}, "--configs: scenario pair has no tenants: (name the searched tenant there)"),
    ([], None, "--tenant: name the tenant to search (or capacity.tenant in scenario pair)"),
    ([], {"capacity": {"tenant": "chat", "beside": {"other": [2]}}},
     "capacity.beside: scenario pair has no tenant named 'other' (tenants: chat, batch)"),
    ([], {"capacity": {"tenant": "chat", "budget": 1}},
     "config: capacity.budget: Input should be greater than or equal to 2 (got 1)"),
    (["--settle", "-1"], None, "--settle: must be a finite number of seconds, 0 or more"),
])
def test_bad_capacity_input_is_one_line_exit_2(tmp_path, capsys, args, doc_change, expected):
    doc = pair(tmp_path)
    if doc_change is not None:
        doc.update(doc_change)
        if doc.get("tenants") is None:
            doc.pop("tenants")
            doc["servers"] = doc["servers"][:1]
    cfg = write_config(tmp_path / "pair.yaml", **doc)
    out = tmp_path / "cap"
    assert cli.main(["capacity", "--configs", str(cfg), "--out", str(out), *args]) == 2
    assert error_line(capsys.readouterr().err) == f"error: {expected}"
    assert not out.exists()


def test_a_probe_loads_its_level_beside_only_the_named_neighbours_salted_by_its_name(tmp_path):
    config = parse_config(pair(tmp_path, api={"extra_body": {"cache_salt": "mine"}}))
    options = CapacityConfig(window_s=3.0, settle_s=1.0)
    alone = probe_config(config, "chat", Neighbours(), NextProbe(12.0, 1), options, tmp_path / "p", "alone-r12-w2")
    assert alone.active_tenants == ["chat"]
    chat = alone.tenants[0]
    # 0.99 needs 381 good requests: at 12 req/s more than the 3 s window, with a Poisson margin; doubled
    assert chat.load.request_rate == 12.0 and chat.load.duration_s == pytest.approx(1.0 + 2 * (381 + 3 * 381 ** 0.5) / 12)
    assert chat.load.settle_s == 1.0 and chat.load.n_requests is None
    assert chat.api.extra_body["cache_salt"] == "mine-pair-alone-r12-w2"
    beside = probe_config(config, "chat", Neighbours((("batch", 4.0),)), NextProbe(3.0, 0), options, tmp_path / "q",
                          "batch4-r3")
    assert beside.active_tenants == ["chat", "batch"]
    assert beside.tenants[1].load.concurrency == 4 and beside.tenants[1].load.duration_s == beside.tenants[0].load.duration_s
    assert beside.tenants[1].api.extra_body["cache_salt"] == "mine-pair-batch4-r3"


def test_capacity_on_test_servers_writes_rows_that_its_probe_folders_re_derive(tmp_path):
    cfg = write_config(tmp_path / "pair.yaml", **pair(tmp_path))
    out = tmp_path / "cap"
    assert cli.main(["capacity", "--configs", str(cfg), "--tenant", "chat", "--beside", "batch=2", "--target", "0.9",
                     "--window", "1", "--settle", "0.5", "--budget", "3", "--out", str(out)]) == 0
    doc = read_capacity_doc(out)
    assert [row.beside for row in doc.rows] == ["", "batch=2"]
    probes = pd.read_csv(out / "capacity_probes.csv")
    for _, probe in probes.iterrows():
        requests = pd.read_csv(f"{probe['run_dir']}/requests.csv")
        mine = requests[(requests["tenant"] == "chat") & (requests["warmup"] == 0) & (requests["in_window"] == 1)]
        good = ((mine["status"] == "ok") & (mine["ttft_s"] <= 0.05)).sum()
        assert (probe["good"], probe["total"]) == (good, len(mine))
    index = json.loads((out / "matrix.json").read_text())
    assert {c["cell"] for c in index["cells"]} == {f"{p.split('/')[-1]}" for p in probes["run_dir"]}


def search_args(cfgs, out, *more) -> list[str]:
    return ["capacity", "--configs", *map(str, cfgs), "--tenant", "chat", "--beside", "batch=2", "--target", "0.9",
            "--window", "1", "--settle", "0.5", "--budget", "3", "--out", str(out), *more]


def test_ctrl_c_keeps_finished_probes_and_a_rerun_resumes_the_same_search(tmp_path):
    cfg = write_config(tmp_path / "pair.yaml", **pair(tmp_path))
    out = tmp_path / "cap"
    args = [sys.executable, "-m", "gpushare.cli", *search_args([cfg], out)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "pair").glob("*/summary.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    finished = {p.parent.name: p.parent.joinpath("requests.csv").read_bytes()
                for p in (out / "pair").glob("*/summary.json")
                if json.loads(p.read_text()).get("complete")}
    assert len(finished) >= 2

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    cells = {c["cell"]: c["status"] for c in json.loads((out / "matrix.json").read_text())["cells"]}
    assert all(cells[name] == "skipped" for name in finished)
    for name, requests in finished.items():  # reused, not measured again
        assert (out / "pair" / name / "requests.csv").read_bytes() == requests
    # the resumed search measured exactly the probes its steps ask for: the finished ones reused,
    # the interrupted one set aside and measured again, nothing else
    asked = {Path(run_dir).name for run_dir in pd.read_csv(out / "capacity_probes.csv")["run_dir"]}
    assert set(cells) == asked and set(finished) < asked and len(asked) == 6
    attempts = {p.name for p in (out / "pair").iterdir() if ".attempt-" in p.name}
    assert len(attempts) <= 1 and {p.name for p in (out / "pair").iterdir() if p.is_dir()} == asked | attempts


def test_searches_run_side_by_side_on_two_gpus_take_the_same_steps(tmp_path):
    cfgs = [write_config(tmp_path / f"{name}.yaml", **pair(tmp_path, scenario=name)) for name in ("a", "b")]
    out = tmp_path / "gpus"
    proc = subprocess.run([sys.executable, "-m", "gpushare.cli", *search_args(cfgs, out, "--gpus", "0,1",
                                                                           "--unchecked-gpus")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on GPU 0" in proc.stderr and "on GPU 1" in proc.stderr
    probes = pd.read_csv(out / "capacity_probes.csv")
    assert set(probes["scenario"]) == {"a", "b"}
    for name, part in probes.groupby("scenario"):
        assert list(part["beside"].fillna("")) == ["", "", "", "batch=2", "batch=2", "batch=2"]  # 3 per search
        assert part["level"].iloc[0] == 10.0  # from the configured rate
    cells = json.loads((out / "matrix.json").read_text())["cells"]
    assert len(cells) == 12 and all(c["status"] == "complete" for c in cells)
    assert (out / "fleet-logs").is_dir()


LAW = {"d0": 0.02, "a": 0.5, "b": 0.25}
"""Token interval 20 ms × (1 + 0.5 × chat's others + 0.25 × batch's in flight): alone, chat's
TPOT is 20, 30, 40, 50, 60 ms at concurrency 1..5."""
TPOT_BOUND = 0.055  # halfway between two levels' intervals: timing jitter decides nothing


def law_pair(tmp_path) -> dict:
    """chat and batch on two ports of one simulated GPU (a group of law-server instances)."""
    group = tmp_path / "gpu"
    group.mkdir()
    law = [sys.executable, str(Path(__file__).parent / "law_server.py"), "--group", str(group),
           *(f"--{k}={v}" for k, v in LAW.items())]
    servers = [{"name": name, "command": law, "port": free_port(), "ready_timeout_s": 30} for name in ("chat-s", "batch-s")]
    tokens = {"kind": "synthetic", "input_tokens": 8, "output_tokens": 8}
    return {"scenario": "law", "servers": servers, "sharing": {"mode": "timeslice"}, "workload": tokens,
            "tenants": [{"name": "chat", "servers": ["chat-s"], "load": {"concurrency": 2, "duration_s": 3},
                         "slo": {"tpot": TPOT_BOUND, "attainment": 0.8}},
                        {"name": "batch", "servers": ["batch-s"], "load": {"concurrency": 2, "duration_s": 3}}],
            "capacity": {"tenant": "chat", "beside": {"batch": [2, 4]}, "window_s": 3, "settle_s": 0.5, "budget": 8},
            "out": str(tmp_path / "runs")}


def test_the_search_finds_the_known_capacity_alone_and_beside_each_level(tmp_path):
    cfg = write_config(tmp_path / "law.yaml", **law_pair(tmp_path))
    out = tmp_path / "cap"
    assert cli.main(["capacity", "--configs", str(cfg), "--out", str(out)]) == 0
    rows = {row.beside: row for row in read_capacity_doc(out).rows}
    truth = {"": 0, "batch=2": 2, "batch=4": 4}
    for beside, in_flight in truth.items():
        row = rows[beside]
        expected = capacity_in_concurrency(LAW["d0"], LAW["a"], LAW["b"], TPOT_BOUND, in_flight)
        assert (row.capacity, row.first_infeasible) == (expected, expected + 1), (beside, row.why)
        assert row.resolved and row.binding == "tpot" and row.knob == "concurrency"
    assert [rows[b].capacity for b in truth] == [4, 3, 2]  # the law's answer, stated
    assert rows["batch=4"].capacity_kept == pytest.approx(0.5)
    assert sum(row.probes for row in rows.values()) <= 3 * 8


def test_interfere_scores_an_open_loop_on_the_capacity_it_kept(tmp_path, capsys):
    doc = pair(tmp_path)
    doc["tenants"][0]["slo"]["attainment"] = 0.9  # the target the capacity is searched at and scored by
    cfg = write_config(tmp_path / "pair.yaml", **doc)
    out = tmp_path / "cap"
    assert cli.main(["capacity", "--configs", str(cfg), "--window", "1", "--settle", "0.5", "--budget", "2",
                     "--tenant", "chat", "--out", str(out)]) == 0
    beside = next(row for row in read_capacity_doc(out).rows if row.beside == "batch=2")  # batch as configured
    assert cli.main(["interfere", "--configs", str(cfg), "--capacity", str(out), "--out", str(tmp_path / "i")]) == 0
    scored = pd.read_csv(tmp_path / "i" / "interference_tenants.csv").set_index("tenant")
    assert scored.loc["chat", "scored_on"] == "capacity" and scored.loc["chat", "kept"] == pytest.approx(beside.capacity_kept)
    assert scored.loc["batch", "scored_on"] == "throughput"
    capsys.readouterr()
    assert cli.main(["interfere", "--configs", str(cfg), "--capacity", str(tmp_path), "--out", str(tmp_path / "j")]) == 2
    assert error_line(capsys.readouterr().err) == (f"error: --capacity: {tmp_path} holds no capacity.json "
                                                   f"(gpushare capacity --out {tmp_path} writes it)")
