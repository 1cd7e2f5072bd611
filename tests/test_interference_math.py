"""Solo-vs-shared interference math: properties (Hypothesis) and worked examples."""

import json
import math

import pytest
from hypothesis import assume, given, strategies as st

from gpushare.measure.interference import (
    INTERFERENCE_METRICS,
    compare_tenants,
    jain_fairness,
    rows_for_csv,
    score_scenario,
    slowdown,
    weighted_speedup,
)

KEYS = [m.key for m in INTERFERENCE_METRICS]
values = st.floats(min_value=0, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-3, max_value=1e6)
# A tenant's summary: any subset of the metrics, some None, but always a positive throughput.
summaries = st.builds(
    lambda rest, tp: {**rest, "output_throughput": tp},
    st.dictionaries(st.sampled_from(KEYS), st.none() | values),
    positive,
)
tenant_names = st.text(alphabet="abcdefgh", min_size=1, max_size=4)
scenarios = st.dictionaries(tenant_names, summaries, min_size=1, max_size=6)


def test_metric_keys_and_directions():
    assert KEYS == [
        "p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "p99_itl_ms",
        "p50_e2el_ms", "p99_e2el_ms", "output_throughput", "good_request_fraction", "request_goodput",
    ]
    assert {m.key for m in INTERFERENCE_METRICS if m.higher_is_better} == {
        "output_throughput", "good_request_fraction", "request_goodput"}


# slowdown

def test_slowdown_doubles_with_latency():
    assert slowdown(120.0, 240.0) == 2.0
    assert slowdown(100.0, 50.0) == 0.5  # a throughput halved: plain ratio, below 1


@given(st.floats(min_value=1e-300, max_value=1e300))
def test_slowdown_is_shared_over_solo(solo):
    assert slowdown(solo, 2 * solo) == 2.0
    assert slowdown(solo, solo) == 1.0


@pytest.mark.parametrize("solo, shared", [
    (0.0, 5.0), (None, 5.0), (5.0, None), (None, None), (math.nan, 5.0), (5.0, math.inf), (math.inf, 5.0),
])
def test_slowdown_undefined(solo, shared):
    assert slowdown(solo, shared) is None


# jain_fairness and weighted_speedup

def test_half_and_full_share():
    assert weighted_speedup([0.5, 1.0]) == 1.5
    assert jain_fairness([0.5, 1.0]) == pytest.approx(1.5 ** 2 / (2 * 1.25)) == pytest.approx(0.9)


@given(st.lists(values, min_size=1, max_size=20))
def test_jain_within_bounds(xs):
    assume(any(x > 0 for x in xs))
    j = jain_fairness(xs)
    assert 1 / len(xs) - 1e-12 <= j <= 1 + 1e-12


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=20))
def test_jain_is_one_iff_all_equal(xs):
    assume(any(xs))
    j = jain_fairness([float(x) for x in xs])
    if len(set(xs)) == 1:
        assert j == pytest.approx(1.0)
    else:
        assert j < 1.0


def test_jain_extremes():
    assert jain_fairness([3.0, 0.0, 0.0, 0.0]) == pytest.approx(1 / 4)
    assert jain_fairness([0.7] * 5) == pytest.approx(1.0)


# Zero or normal floats: scaling a subnormal can round it to 0, which really changes the input.
@given(st.lists(st.just(0.0) | st.floats(min_value=1e-100, max_value=1e6), min_size=1, max_size=20),
       st.floats(min_value=1e-3, max_value=1e3))
def test_jain_scale_invariant(xs, c):
    assume(any(x > 0 for x in xs))
    assert jain_fairness([c * x for x in xs]) == pytest.approx(jain_fairness(xs), rel=1e-9)


@given(st.lists(values, min_size=1, max_size=10).flatmap(lambda xs: st.tuples(st.just(xs), st.permutations(xs))))
def test_jain_and_stp_ignore_order(pair):
    xs, shuffled = pair
    assert jain_fairness(shuffled) == jain_fairness(xs)
    assert weighted_speedup(shuffled) == weighted_speedup(xs)


@pytest.mark.parametrize("xs", [[], [1.0, None], [1.0, math.nan], [1.0, math.inf], [1.0, -0.5], [0.0, 0.0]])
def test_jain_undefined(xs):
    assert jain_fairness(xs) is None


@pytest.mark.parametrize("xs", [[], [1.0, None]])
def test_stp_undefined(xs):
    assert weighted_speedup(xs) is None


# compare_tenants and score_scenario

@given(scenarios)
def test_identical_runs_show_no_interference(solo):
    shared = {t: dict(s) for t, s in solo.items()}
    for row in compare_tenants(solo, shared):
        if row.solo in (None, 0.0):
            assert row.slowdown is None
        else:
            assert row.slowdown == 1.0
    scores = score_scenario(solo, shared)
    assert scores.fairness == 1.0
    assert scores.stp == len(solo) == scores.tenants
    assert scores.aggregate_output_throughput == scores.solo_output_throughput_sum


def _reordered(mapping, order):
    return {t: mapping[t] for t in order}


@given(st.data())
def test_results_ignore_tenant_order(data):
    solo = data.draw(scenarios)
    shared = {t: data.draw(summaries) for t in solo}
    solo2 = _reordered(solo, data.draw(st.permutations(list(solo))))
    shared2 = _reordered(shared, data.draw(st.permutations(list(shared))))
    assert compare_tenants(solo2, shared2) == compare_tenants(solo, shared)
    assert score_scenario(solo2, shared2) == score_scenario(solo, shared)
    assert list(score_scenario(solo2, shared2).normalised_throughput) == sorted(solo)


def test_one_tenant_halved():
    solo = {"b": {"output_throughput": 200.0, "p99_ttft_ms": 40.0}, "a": {"output_throughput": 100.0}}
    shared = {"a": {"output_throughput": 50.0}, "b": {"output_throughput": 200.0, "p99_ttft_ms": 80.0}}
    scores = score_scenario(solo, shared)
    assert scores.normalised_throughput == {"a": 0.5, "b": 1.0}
    assert scores.stp == 1.5
    assert scores.fairness == pytest.approx(0.9)
    assert scores.aggregate_output_throughput == 250.0
    assert scores.solo_output_throughput_sum == 300.0
    assert scores.tenants == 2

    rows = compare_tenants(solo, shared)
    assert [(r.tenant, r.metric) for r in rows] == [(t, k) for t in ("a", "b") for k in KEYS]
    ttft_b = next(r for r in rows if (r.tenant, r.metric) == ("b", "p99_ttft_ms"))
    assert (ttft_b.solo, ttft_b.shared, ttft_b.slowdown) == (40.0, 80.0, 2.0)
    ttft_a = next(r for r in rows if (r.tenant, r.metric) == ("a", "p99_ttft_ms"))
    assert (ttft_a.solo, ttft_a.shared, ttft_a.slowdown) == (None, None, None)

    assert rows_for_csv(rows)[0] == {"tenant": "a", "metric": "p50_ttft_ms", "solo": None, "shared": None,
                                     "slowdown": None}
    assert json.loads(scores.model_dump_json()) == {
        "tenants": 2, "normalised_throughput": {"a": 0.5, "b": 1.0}, "fairness": scores.fairness, "stp": 1.5,
        "aggregate_output_throughput": 250.0, "solo_output_throughput_sum": 300.0,
    }


def test_missing_shared_throughput_leaves_scores_undefined():
    solo = {"a": {"output_throughput": 100.0}, "b": {"output_throughput": 100.0}}
    shared = {"a": {"output_throughput": 80.0}, "b": {}}
    scores = score_scenario(solo, shared)
    assert scores.normalised_throughput == {"a": 0.8, "b": None}
    assert scores.fairness is None and scores.stp is None and scores.aggregate_output_throughput is None
    assert scores.solo_output_throughput_sum == 200.0


@pytest.mark.parametrize("func", [compare_tenants, score_scenario])
def test_tenant_on_one_side_only_is_an_error(func):
    one = {"a": {"output_throughput": 1.0}}
    both = {"a": {"output_throughput": 1.0}, "ghost": {"output_throughput": 1.0}}
    with pytest.raises(ValueError, match="ghost"):
        func(one, both)
    with pytest.raises(ValueError, match="ghost"):
        func(both, one)
