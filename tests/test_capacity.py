"""`gpushare capacity`: the searches' probes are cells of a plan, run by the matrix's executors.
These use the SSE test server and the known-law server (our own logic against known answers);
the real path, on vLLM, is in test_e2e.py."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from gpushare import cli
from gpushare.config import parse_config
from gpushare.experiment.capacity import Neighbours, SearchOptions, plan_capacity, probe_config
from gpushare.measure.capacity_doc import read_capacity_doc
from gpushare.measure.capacity_search import NextProbe
from helpers import error_line, write_config
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
     "--beside: batch runs a closed loop; its level '1.5' is a concurrency, a whole number"),
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
    options = SearchOptions(window_s=3.0, settle_s=1.0)
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
