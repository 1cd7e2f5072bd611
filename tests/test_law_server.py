"""law_server: its latency law is what a real gpushare run measures, so a capacity search can be tested
against a known answer. Every request streams the same number of tokens, so closed-loop workers move in
lockstep and a request's steady TPOT is the law's interval at the concurrencies offered. The measured TPOT
p50 must be within TOLERANCE of it: measured runs land within 1 %, and every assertion's expected value is
more than 10 % away from what the law would give without the term it checks."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpushare import cli
from gpushare.serving.servers import answers
from helpers import TESTS, alive, free_port, run_folder, summary, wait_until, write_config
from law_server import capacity_in_concurrency, token_interval

pytestmark = pytest.mark.timeout(120)

LAW_SERVER = [sys.executable, str(TESTS / "law_server.py")]
D0, A, B = 0.02, 0.5, 0.25
TOKENS = 12
TOLERANCE = 0.05
WORKLOAD = {"kind": "synthetic", "input_tokens": 8, "output_tokens": TOKENS}


def test_the_law_and_its_capacity_agree_exactly():
    assert token_interval(D0, A, B, 2, 3) == pytest.approx(D0 * (1 + 2 * A + 3 * B))
    assert capacity_in_concurrency(D0, A, B, 0.05, 2) == 3  # 0.02 × (1 + 0.5 × 2 + 0.25 × 2) = 0.05
    for neighbour in (0, 1, 3):
        for c in range(1, 10):
            bound = token_interval(D0, A, B, c - 1, neighbour)
            assert capacity_in_concurrency(D0, A, B, bound, neighbour) == c
            assert capacity_in_concurrency(D0, A, B, math.nextafter(bound, 0.0), neighbour) == c - 1
    with pytest.raises(ValueError, match="no highest concurrency"):
        capacity_in_concurrency(D0, 0.0, B, 1.0, 0)


@pytest.fixture
def one_process(tmp_path: Path) -> Iterator[list[str]]:
    """Mode 1: one law server on two ports; the URLs of both."""
    ports = [free_port(), free_port()]
    with open(tmp_path / "law.log", "wb") as log:
        proc = subprocess.Popen([*LAW_SERVER, "--ports", ",".join(map(str, ports)), "--d0", str(D0), "--a", str(A),
                                 "--b", str(B)], stdout=log, stderr=subprocess.STDOUT)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        wait_until(lambda: all(answers(url + "/v1/models") for url in urls), timeout=20)
        yield urls
    finally:
        proc.terminate()
        proc.wait(10)


def external(name: str, url: str) -> dict:
    return {"name": name, "engine": "external", "url": url}


def closed(concurrency: int, duration_s: float) -> dict:
    return {"concurrency": concurrency, "duration_s": duration_s, "warmup_requests": 0}


def tenant_tpot(tmp_path: Path, servers: list[dict], loads: dict[str, dict]) -> dict[str, float]:
    """One `gpushare run` with a tenant per server (named by its load), each tenant's TPOT p50 in seconds."""
    tenants = [{"name": name, "servers": [server["name"]], "load": load}
               for (name, load), server in zip(loads.items(), servers)]
    cfg = write_config(tmp_path / "law.yaml", scenario="law", servers=servers, sharing={"mode": "timeslice"},
                       workload=WORKLOAD, tenants=tenants, out=str(tmp_path / "runs"))
    assert cli.main(["run", "--config", str(cfg)]) == 0
    doc = summary(run_folder(tmp_path / "runs"))
    assert doc["complete"]
    return {name: block["p50_tpot_ms"] / 1000 for name, block in doc["tenants"].items()}


def test_alone_tpot_grows_by_a_per_request_on_the_port(tmp_path, one_process):
    cfg = write_config(tmp_path / "alone.yaml", scenario="alone", servers=[external("s0", one_process[0])],
                       workload=WORKLOAD, load={"concurrency": 1, "warmup_requests": 0})
    out = tmp_path / "matrix"
    assert cli.main(["matrix", "--configs", str(cfg), "--concurrency", "1", "3", "--n-requests", "6",
                     "--out", str(out)]) == 0
    for c in (1, 3):
        measured = summary(out / "alone" / f"c{c}_rep1")["p50_tpot_ms"] / 1000
        assert measured == pytest.approx(token_interval(D0, A, B, c - 1, 0), rel=TOLERANCE), c


def test_a_neighbour_on_the_other_port_adds_b_per_request(tmp_path, one_process):
    servers = [external("s0", one_process[0]), external("s1", one_process[1])]
    tpot = tenant_tpot(tmp_path, servers, {"probe": closed(1, 2.0), "neighbour": closed(3, 2.0)})
    assert tpot["probe"] == pytest.approx(token_interval(D0, A, B, 0, 3), rel=TOLERANCE)
    assert tpot["neighbour"] == pytest.approx(token_interval(D0, A, B, 2, 1), rel=TOLERANCE)


def test_instances_launched_per_port_share_their_group(tmp_path):
    """Mode 2, as a planner runs it: gpushare launches each instance with vLLM's flags; they see each
    other through the group directory (b = 1 doubles the probe's interval), and leave it empty."""
    group, b = tmp_path / "group", 1.0
    command = [*LAW_SERVER, "--group", str(group), "--d0", str(D0), "--a", str(A), "--b", str(b)]
    servers = [{"name": f"s{i}", "command": command, "ready_timeout_s": 20} for i in range(2)]
    tpot = tenant_tpot(tmp_path, servers, {"probe": closed(1, 1.5), "neighbour": closed(2, 1.5)})
    # between one of the neighbour's requests and its next, one fewer is in flight: on a loaded
    # machine those gaps take up to a tenth of the probe's tokens (b = 1 makes each gap count)
    assert tpot["probe"] == pytest.approx(token_interval(D0, A, b, 0, 2), rel=2 * TOLERANCE)
    assert tpot["neighbour"] == pytest.approx(token_interval(D0, A, b, 1, 1), rel=2 * TOLERANCE)
    doc = summary(run_folder(tmp_path / "runs"))
    assert not any(alive(server["pid"]) for server in doc["servers"])
    assert list(group.iterdir()) == []
