"""The sharing modes compared like against like (reporting/compare.py): built runs with known
numbers, and properties over random run sets."""

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from gpushare.reporting.compare import change, mode_comparisons

GPU = "NVIDIA H200"


def run(folder: str, scenario: str, mode: str, load: float, throughput: float, p99_s: float, *,
        load_mode: str = "closed_loop", workload: str = "synthetic 512/128", tenant: str | None = None,
        energy: float | None = None) -> dict:
    return {"run": folder, "scenario": scenario, "sharing_mode": mode, "load": load, "load_mode": load_mode,
            "load_unit": "req/s" if load_mode == "open_loop" else "in flight",
            "workload": workload, "tenant": tenant, "gpu_model": GPU, "output_throughput": throughput,
            "p99_latency_s": p99_s, "energy_per_output_token_j": energy}


def test_a_closed_loop_is_ranked_on_throughput_an_open_loop_on_latency():
    runs = pd.DataFrame([
        run("a/c8", "a", "baseline", 8, 1000.0, 1.0, energy=0.5),
        run("b/c8", "b", "mps", 8, 900.0, 0.8, energy=0.4),
        run("b/c8r2", "b", "mps", 8, 1100.0, 1.2, energy=0.6),  # a repeat: averaged to 1000, 1.0
        run("c/c8", "c", "mig_emulation", 8, 600.0, 2.0),
        run("a/r4", "a", "baseline", 4, 400.0, 0.5, load_mode="open_loop"),
        run("b/r4", "b", "mps", 4, 410.0, 0.75, load_mode="open_loop"),
    ])
    closed, opened = mode_comparisons(runs)
    assert closed.headline() == ("At load 8, one server gave the most output throughput (1,000 tokens/s); "
                                 "MPS ±0%; MIG-like caps -40%.")
    assert closed.lowest_latency.value == 1.0 and closed.least_energy.value == 0.5
    # the open loop's throughput is its arrival rate: never what it is ranked on
    assert opened.headline() == ("At 4 req/s, one server had the lowest P99 end-to-end latency (0.50 s); "
                                 "MPS 1.50×.")


def test_tenants_are_compared_only_beside_the_same_neighbours_at_the_same_loads():
    runs = pd.DataFrame([
        run("a/r9", "a[chat+batch]:chat", "baseline", 9, 0, 1.0, load_mode="open_loop", tenant="chat"),
        run("a/r9", "a[chat+batch]:batch", "baseline", 16, 2000.0, 3.0, tenant="batch"),
        run("b/r9", "b[chat+batch]:chat", "timeslice", 9, 0, 2.0, load_mode="open_loop", tenant="chat"),
        run("b/r9", "b[chat+batch]:batch", "timeslice", 16, 1500.0, 4.0, tenant="batch"),
        run("c/r12", "c[chat+batch]:batch", "mps", 16, 1900.0, 3.0, tenant="batch"),  # chat at 12: not alike
        run("c/r12", "c[chat+batch]:chat", "mps", 12, 0, 1.0, load_mode="open_loop", tenant="chat"),
        run("a/alone", "a[chat]:chat", "baseline", 9, 0, 0.5, load_mode="open_loop", tenant="chat"),
    ])
    lines = [c.headline() for c in mode_comparisons(runs)]
    assert lines == [
        "For batch at load 16 beside chat at 9 req/s, one server gave the most output throughput (2,000 tokens/s); "
        "time-slicing -25%.",
        "For chat at 9 req/s beside batch at load 16, one server had the lowest P99 end-to-end latency (1.00 s); "
        "time-slicing 2.00×.",
    ]


def test_two_scenarios_of_one_mode_are_told_apart_by_name_and_one_mode_is_never_compared():
    runs = pd.DataFrame([run("a/c8", "a", "mps", 8, 1000.0, 1.0), run("b/c8", "b", "mps", 8, 800.0, 1.0)])
    assert mode_comparisons(runs) == []
    runs = pd.concat([runs, pd.DataFrame([run("c/c8", "c", "baseline", 8, 500.0, 1.0)])])
    (only,) = mode_comparisons(runs)
    assert [r.name for r in only.ranked] == ["MPS [a]", "MPS [b]", "one server"]


def test_a_change_reads_as_a_signed_percent():
    assert [change(x) for x in (0.0, -0.00001, 0.004, -0.25, 0.5)] == ["±0%", "±0%", "+0.4%", "-25%", "+50%"]


MODES = ["baseline", "timeslice", "mps", "mig_emulation"]


@st.composite
def run_sets(draw) -> pd.DataFrame:
    rows = []
    for i in range(draw(st.integers(1, 12))):
        mode = draw(st.sampled_from(MODES))
        load_mode = draw(st.sampled_from(["closed_loop", "open_loop"]))
        rows.append(run(f"{mode}/{i}", mode, mode, draw(st.sampled_from([4.0, 8.0])),
                        draw(st.floats(1, 1e4)), draw(st.floats(0.01, 10)), load_mode=load_mode,
                        workload=draw(st.sampled_from(["w1", "w2"]))))
    return pd.DataFrame(rows)


@settings(max_examples=200, deadline=None)
@given(run_sets())
def test_every_comparison_holds_two_modes_or_more_best_first_on_its_loops_quantity(runs):
    compared = mode_comparisons(runs)
    groups = runs.groupby(["workload", "load_mode", "load"])["sharing_mode"].nunique()
    assert len(compared) == int((groups >= 2).sum())
    for c in compared:
        values = [r.value for r in c.ranked]
        assert len(c.ranked) >= 2 and len({r.name for r in c.ranked}) == len(c.ranked)
        assert values == sorted(values, reverse=not c.rate_led)
        assert ("req/s" in c.where) == c.rate_led
