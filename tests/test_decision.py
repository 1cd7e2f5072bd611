"""The report's opening decision, on committed results: in sharing modes and tenants, never
run names, with the numbers of the tables the report shows."""

import re
from pathlib import Path

from gpushare.reporting.capacity import capacity_table, find_capacity, read_capacity
from gpushare.reporting.decision import decision
from gpushare.reporting.isolation import find_interference, isolation_table, read_interference
from gpushare.reporting.plan import find_plans, read_plans
from gpushare.reporting.run_tables import read_runs, summarize_runs

RESULTS = Path(__file__).parent.parent / "results"


def decided(folder: Path) -> tuple[list[str], object, object]:
    found = read_runs([folder])
    runs = found.complete_runs()
    summary = summarize_runs(runs)
    capacities = read_capacity(find_capacity(found.paths))
    lines = decision(runs, capacities, read_interference(find_interference(found.paths)),
                     read_plans(find_plans(found.paths)))
    return lines, summary, capacities


def test_a_capacity_set_opens_with_the_mode_that_held_the_most_beside_its_neighbour():
    lines, _, capacities = decided(RESULTS / "h200" / "capacity")
    table = capacity_table(capacities)
    beside = table[table["beside"] == "batch=16"].sort_values("capacity", ascending=False)
    (line,) = lines
    assert line.startswith("Beside batch=16, chat held the most load inside its SLO (attainment 0.99) under one server: "
                           f"{beside.iloc[0]['capacity']:g} req/s")
    assert f"time-slicing {beside[beside['sharing_mode'] == 'timeslice'].iloc[0]['capacity']:g}" in line
    assert f"MIG-like caps {beside[beside['sharing_mode'] == 'mig_emulation'].iloc[0]['capacity']:g}" in line
    assert "h200-" not in line


def test_a_matrix_opens_with_each_loads_best_mode_by_its_throughput():
    lines, summary, _ = decided(RESULTS / "h100" / "matrix")
    for line in lines:
        load = float(re.match(r"At load (\S+),", line)[1])
        best = summary[summary["load"] == load]["output_throughput"].max()
        assert f"({best:,.0f} tokens/s)" in line and "h100-" not in line
    assert len(lines) == summary["load"].nunique()


def test_modes_are_compared_within_a_workload_never_across_two():
    lines, summary, _ = decided(RESULTS / "h200" / "sharegpt-matrix")
    runs = read_runs([RESULTS / "h200" / "sharegpt-matrix"]).complete_runs()
    assert len(lines) == runs["workload"].nunique() == 2 and all("h200-" not in line for line in lines)
    for line, (workload, part) in zip(lines, runs.groupby("workload")):
        assert line.startswith(f"With {workload}, at load 16, ")
        assert f"({part['output_throughput'].max():,.0f} tokens/s)" in line
        assert {"one server", "MPS", "MIG-like caps"} <= set(re.findall(r"one server|MPS|MIG-like caps", line))


def test_an_interference_set_opens_with_the_mode_that_kept_the_victims_latency_closest_to_alone():
    lines, _, _ = decided(RESULTS / "h200" / "interference")
    table = isolation_table(read_interference(find_interference([RESULTS / "h200" / "interference"])))
    chat = table[table["tenant"] == "chat"].sort_values("p99_ttft_headline_slowdown")
    (line,) = [line for line in lines if line.startswith("chat's P99 TTFT")]
    assert f"under MPS (x{chat.iloc[0]['p99_ttft_headline_slowdown']:.2f})" in line and chat.iloc[0]["sharing_mode"] == "mps"
    assert f"under time-slicing (x{chat.iloc[-1]['p99_ttft_headline_slowdown']:.2f})" in line
    assert all("h200-" not in line for line in lines)
