"""Solo-vs-shared interference math: properties (Hypothesis) and worked examples: slowdowns,
each tenant's score on its own quantity, fairness and STP, the output over the interval every
tenant loads, and a victim per loaded level of its aggressor."""

import json
import math

import pytest
from hypothesis import assume, given, strategies as st

from gpushare.core.records import RequestRecord
from gpushare.measure.interference import (
    INTERFERENCE_METRICS,
    LEVEL_METRICS,
    REASONS,
    Rates,
    StepValue,
    TenantPhases,
    common_interval,
    common_output_throughput,
    compare_tenants,
    jain_fairness,
    loaded_levels,
    rows_for_csv,
    score_scenario,
    score_tenant,
    slowdown,
    token_arrivals,
    weighted_speedup,
)
from gpushare.measure.interference_doc import STEP_METRICS
from gpushare.measure.metric_catalog import METRICS

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


# compare_tenants

@given(scenarios)
def test_identical_runs_show_no_interference_per_metric(solo):
    shared = {t: dict(s) for t, s in solo.items()}
    for row in compare_tenants(solo, shared):
        if row.solo in (None, 0.0):
            assert row.slowdown is None
        else:
            assert row.slowdown == 1.0


def _reordered(mapping, order):
    return {t: mapping[t] for t in order}


@given(st.data())
def test_comparisons_ignore_tenant_order(data):
    solo = data.draw(scenarios)
    shared = {t: data.draw(summaries) for t in solo}
    solo2 = _reordered(solo, data.draw(st.permutations(list(solo))))
    shared2 = _reordered(shared, data.draw(st.permutations(list(shared))))
    assert compare_tenants(solo2, shared2) == compare_tenants(solo, shared)


def test_one_tenant_compared():
    solo = {"b": {"output_throughput": 200.0, "p99_ttft_ms": 40.0}, "a": {"output_throughput": 100.0}}
    shared = {"a": {"output_throughput": 50.0}, "b": {"output_throughput": 200.0, "p99_ttft_ms": 80.0}}
    rows = compare_tenants(solo, shared)
    assert [(r.tenant, r.metric) for r in rows] == [(t, k) for t in ("a", "b") for k in KEYS]
    ttft_b = next(r for r in rows if (r.tenant, r.metric) == ("b", "p99_ttft_ms"))
    assert (ttft_b.solo, ttft_b.shared, ttft_b.slowdown) == (40.0, 80.0, 2.0)
    ttft_a = next(r for r in rows if (r.tenant, r.metric) == ("a", "p99_ttft_ms"))
    assert (ttft_a.solo, ttft_a.shared, ttft_a.slowdown) == (None, None, None)
    assert rows_for_csv(rows)[0] == {"tenant": "a", "metric": "p50_ttft_ms", "solo": None, "shared": None,
                                     "slowdown": None}


def test_tenant_on_one_side_only_is_an_error():
    one = {"a": {"output_throughput": 1.0}}
    both = {"a": {"output_throughput": 1.0}, "ghost": {"output_throughput": 1.0}}
    with pytest.raises(ValueError, match="ghost"):
        compare_tenants(one, both)
    with pytest.raises(ValueError, match="ghost"):
        compare_tenants(both, one)


# score_scenario: each tenant on its own quantity

rates = st.builds(Rates, positive, positive)
tenants = st.builds(TenantPhases, st.booleans(), st.booleans(), rates, rates, st.none() | rates)
scenario_tenants = st.dictionaries(tenant_names, tenants, min_size=1, max_size=6)


def closed(solo_tp, shared_tp, dedicated_tp=None):
    return TenantPhases(False, False, Rates(solo_tp, None), Rates(shared_tp, None),
                        None if dedicated_tp is None else Rates(dedicated_tp, None))


def open_loop(solo_goodput, shared_goodput, slo=True, tp=(512.0, 512.0)):
    """An open loop's output tok/s is its arrival rate: the same alone and shared."""
    return TenantPhases(True, slo, Rates(tp[0], solo_goodput), Rates(tp[1], shared_goodput))


@given(scenario_tenants)
def test_identical_phases_keep_everything(tenants):
    same = {name: TenantPhases(t.open_loop, t.has_slo, t.solo, t.solo, t.solo) for name, t in tenants.items()}
    scores = score_scenario(same)
    counted = [s for s in scores.scored.values() if s.scored_on is not None]
    assert all(s.kept == 1.0 == s.kept_vs_dedicated for s in counted)
    assert scores.stp == (len(counted) or None) == scores.stp_vs_dedicated
    assert scores.fairness == (1.0 if counted else None) == scores.fairness_vs_dedicated
    assert scores.tenants == len(tenants)


@given(scenario_tenants)
def test_each_tenant_is_scored_on_what_the_gpu_gave_it(tenants):
    scores = score_scenario(tenants)
    assert list(scores.scored) == sorted(tenants)
    for name, score in scores.scored.items():
        t = tenants[name]
        expected = "throughput" if not t.open_loop else "goodput" if t.has_slo else None
        assert score.scored_on == expected and score.reason == REASONS[expected]
        if expected is None:
            assert score.kept is None and score.solo is None and score.shared is None
            continue
        pick = (lambda r: r.output_throughput) if expected == "throughput" else (lambda r: r.goodput)
        assert (score.solo, score.shared) == (pick(t.solo), pick(t.shared))
        assert score.kept == slowdown(pick(t.solo), pick(t.shared))
        assert score.dedicated == (None if t.dedicated is None else pick(t.dedicated))
        assert score.kept_vs_dedicated == (None if t.dedicated is None else slowdown(pick(t.dedicated), pick(t.shared)))
    kept = [s.kept for s in scores.scored.values() if s.scored_on is not None]
    assert scores.stp == weighted_speedup(kept) and scores.fairness == jain_fairness(kept)


@given(scenario_tenants, rates, rates)
def test_an_open_loop_without_an_slo_changes_no_score(tenants, solo, shared):
    assume("zz" not in tenants)
    with_it = score_scenario({**tenants, "zz": TenantPhases(True, False, solo, shared, solo)})
    without = score_scenario(tenants)
    assert (with_it.stp, with_it.fairness, with_it.stp_vs_dedicated) == (without.stp, without.fairness,
                                                                         without.stp_vs_dedicated)
    assert with_it.scored["zz"].scored_on is None and "not scored" in with_it.scored["zz"].reason


@given(st.data())
def test_scores_ignore_tenant_order(data):
    tenants = data.draw(scenario_tenants)
    shuffled = _reordered(tenants, data.draw(st.permutations(list(tenants))))
    assert score_scenario(shuffled) == score_scenario(tenants)


def test_an_open_loop_is_scored_on_goodput_not_its_arrival_rate():
    """chat sends 4 req/s alone and shared, so its tok/s barely moves, but half its requests
    miss the SLO shared: goodput says it kept half, where tok/s said it kept everything."""
    scores = score_scenario({"chat": open_loop(4.0, 2.0), "batch": closed(3000.0, 1500.0)})
    assert scores.scored["chat"].scored_on == "goodput" and scores.scored["chat"].kept == 0.5
    assert scores.scored["batch"].scored_on == "throughput" and scores.scored["batch"].kept == 0.5
    assert scores.stp == 1.0 and scores.fairness == pytest.approx(1.0)
    assert scores.stp_vs_dedicated is None and scores.fairness_vs_dedicated is None  # no reference
    assert json.loads(scores.model_dump_json(exclude_unset=True)) == {
        "tenants": 2, "fairness": scores.fairness, "stp": 1.0, "fairness_vs_dedicated": None,
        "stp_vs_dedicated": None, "scored": {
            "batch": {"scored_on": "throughput", "reason": REASONS["throughput"], "solo": 3000.0, "shared": 1500.0,
                      "kept": 0.5, "dedicated": None, "kept_vs_dedicated": None},
            "chat": {"scored_on": "goodput", "reason": REASONS["goodput"], "solo": 4.0, "shared": 2.0, "kept": 0.5,
                     "dedicated": None, "kept_vs_dedicated": None}}}


def test_against_a_dedicated_gpu():
    scores = score_scenario({"a": closed(100.0, 50.0, dedicated_tp=200.0), "b": closed(100.0, 100.0, 100.0)})
    assert scores.scored["a"].kept_vs_dedicated == 0.25 and scores.stp_vs_dedicated == 1.25
    assert scores.stp == 1.5 and scores.fairness_vs_dedicated == pytest.approx(jain_fairness([0.25, 1.0]))


def test_capacity_kept_scores_an_open_loop_with_an_slo():
    tenants = {"chat": open_loop(4.0, 4.0), "batch": closed(100.0, 60.0, 120.0)}
    scores = score_scenario(tenants, capacity_kept={"chat": 0.7})
    chat = scores.scored["chat"]
    assert (chat.scored_on, chat.kept, chat.solo, chat.shared, chat.kept_vs_dedicated) == ("capacity", 0.7, None,
                                                                                          None, None)
    assert scores.stp == pytest.approx(1.3) and scores.stp_vs_dedicated is None  # chat has no dedicated capacity
    assert score_scenario(tenants, capacity_kept={}) == score_scenario(tenants)


@pytest.mark.parametrize("capacity, match", [
    ({"batch": 0.5}, "tenant batch: capacity kept is given for a tenant that is not an open loop with an SLO"),
    ({"feed": 0.5}, "tenant feed: capacity kept is given for a tenant that is not an open loop with an SLO"),
    ({"ghost": 0.5}, "capacity kept for tenants not in the scenario: ghost"),
])
def test_capacity_only_for_an_open_loop_with_an_slo(capacity, match):
    tenants = {"chat": open_loop(4.0, 4.0), "batch": closed(1.0, 1.0), "feed": open_loop(None, None, slo=False)}
    with pytest.raises(ValueError, match=match):
        score_scenario(tenants, capacity_kept=capacity)


def test_a_missing_rate_leaves_the_scores_undefined():
    scores = score_scenario({"a": closed(100.0, 80.0), "b": closed(100.0, None)})
    assert scores.scored["a"].kept == 0.8 and scores.scored["b"].kept is None
    assert scores.fairness is None and scores.stp is None


def test_no_tenant_scored_has_no_scores():
    scores = score_scenario({"a": open_loop(1.0, 1.0, slo=False), "b": open_loop(2.0, 1.0, slo=False)})
    assert scores.stp is None and scores.fairness is None and scores.tenants == 2


# common_output_throughput: one rate over the interval every tenant loads

def request(tenant, sent, end, chunks=(), warmup=False, in_window=True, first_token=None, output_tokens=None):
    times = [t for t, _ in chunks]
    return RequestRecord(index=0, endpoint="s", tenant=tenant, sent=sent, end=end, warmup=warmup,
                         in_window=in_window, chunk_times=times, chunk_tokens=[n for _, n in chunks],
                         first_token=first_token if first_token is not None else (times[0] if times else None),
                         output_tokens=output_tokens if output_tokens is not None else sum(n for _, n in chunks))


@pytest.mark.parametrize("spans, expected", [
    ([(0.0, 10.0), (2.0, 12.0)], (2.0, 10.0)),
    ([(0.0, 10.0)], (0.0, 10.0)),
    ([(0.0, 10.0), (3.0, 4.0), (1.0, 9.0)], (3.0, 4.0)),
    ([(0.0, 1.0), (2.0, 3.0)], None),  # never all loading
    ([(0.0, 1.0), (1.0, 3.0)], None),  # an instant is no interval
    ([(0.0, 1.0), None], None),  # a tenant without a span
    ([], None),
])
def test_common_interval(spans, expected):
    assert common_interval(spans) == expected


def test_only_tokens_inside_the_common_interval_count():
    """batch starts at 2 s (an idle first step), chat ends at 10 s: the interval is [2, 10];
    chat's tokens at 1 s and batch's at 11 s are outside it, warm-ups never count, and a request
    sent after the window closed counts for the tokens it got inside the interval."""
    chat = [request("chat", 0.0, 5.0, [(1.0, 3), (4.0, 5)]), request("chat", 6.0, 10.0, [(7.0, 2), (10.0, 1)]),
            request("chat", -5.0, -1.0, [(-2.0, 100)], warmup=True, in_window=False)]
    batch = [request("batch", 2.0, 12.0, [(3.0, 10), (11.0, 10)]),
             request("batch", 9.0, 9.5, [(9.5, 4)], in_window=False)]
    common = common_output_throughput({"chat": chat, "batch": batch})
    assert common.interval_s == 8.0 and common.output_tokens == 5 + 2 + 1 + 10 + 4
    assert common.output_throughput == common.output_tokens / 8.0 and common.token_times == "chunks"


def test_without_chunk_times_tokens_are_spread_from_first_token_to_end():
    one = request("a", 0.0, 4.0, first_token=1.0, output_tokens=4)  # tokens at 1, 2, 3, 4
    assert token_arrivals(one) == ([(1.0, 1), (2.0, 1), (3.0, 1), (4.0, 1)], False)
    assert token_arrivals(request("a", 0.0, 4.0, first_token=1.0, output_tokens=1)) == ([(1.0, 1)], False)
    assert token_arrivals(request("a", 0.0, 4.0, output_tokens=3)) == ([(4.0, 3)], False)  # not streamed
    assert token_arrivals(request("a", 0.0, None, output_tokens=3)) == ([], False)  # never ended
    other = request("b", 2.5, 10.0, [(3.0, 1)])
    common = common_output_throughput({"a": [one], "b": [other]})
    assert (common.interval_s, common.output_tokens, common.token_times) == (1.5, 3, "estimated")


@pytest.mark.parametrize("records", [
    {},
    {"a": [request("a", 0.0, 1.0, [(0.5, 1)])], "b": [request("b", 2.0, 3.0, [(2.5, 1)])]},
    {"a": [request("a", 0.0, 1.0, [(0.5, 1)])], "b": [request("b", 0.0, 1.0, [(0.5, 1)], warmup=True)]},
])
def test_no_common_interval_gives_no_aggregate(records):
    assert common_output_throughput(records) is None


chunk_lists = st.lists(st.tuples(st.floats(0, 100), st.integers(1, 5)), min_size=1, max_size=6).map(sorted)
tenant_requests = st.lists(st.builds(lambda s, d, c: request("x", s, max(s + d, c[-1][0]), c),
                                     st.floats(0, 100), st.floats(0.01, 50), chunk_lists), min_size=1, max_size=5)


@given(st.dictionaries(tenant_names, tenant_requests, min_size=1, max_size=4), st.data())
def test_the_aggregate_is_bounded_and_ignores_tenant_order(records, data):
    common = common_output_throughput(records)
    shuffled = common_output_throughput(_reordered(records, data.draw(st.permutations(list(records)))))
    assert shuffled == common
    if common is None:
        return
    spans = [(min(r.sent for r in recs), max(r.end for r in recs)) for recs in records.values()]
    assert common.interval_s <= min(end - start for start, end in spans) + 1e-9
    assert 0 <= common.output_tokens <= sum(n for recs in records.values() for r in recs for n in r.chunk_tokens)


# loaded_levels: a victim per level of its aggressor's load

def test_the_worst_loaded_level_not_a_blend_with_the_idle_step():
    steps = [StepValue(0, 0.0, 30.0), StepValue(1, 8.0, 60.0), StepValue(2, 16.0, 90.0), StepValue(3, 32.0, 80.0)]
    rows = loaded_levels(METRICS["p99_ttft_ms"], 50.0, steps)
    assert [r.level for r in rows] == [8.0, 16.0, 32.0]  # the idle step is no neighbour load
    assert [r.slowdown for r in rows] == [1.2, 1.8, 1.6] and [r.worst for r in rows] == [False, True, False]
    throughput = loaded_levels(METRICS["output_throughput"], 100.0, steps)
    assert [r.worst for r in throughput] == [True, False, False]  # the least kept: at 8 (60 of 100)


@pytest.mark.parametrize("solo, values, worst", [
    (None, [1.0, 2.0], [False, False]),  # nothing alone to compare with
    (1.0, [None, None], [False, False]),
    (1.0, [2.0, 2.0], [True, False]),  # a tie goes to the lower level
    (1.0, [None, 3.0], [False, True]),
])
def test_worst_level_edge_cases(solo, values, worst):
    steps = [StepValue(i + 1, float(i + 1), v) for i, v in enumerate(values)]
    assert [r.worst for r in loaded_levels(METRICS["p99_tpot_ms"], solo, steps)] == worst


@given(st.floats(1e-3, 1e3), st.lists(st.tuples(st.sampled_from([0.0, 2.0, 4.0, 8.0]), st.none() | positive),
                                      max_size=8), st.sampled_from(LEVEL_METRICS))
def test_one_worst_level_the_worst_of_the_loaded_ones(solo, points, metric):
    steps = [StepValue(i, level, value) for i, (level, value) in enumerate(points)]
    rows = loaded_levels(metric, solo, steps)
    assert [r.step for r in rows] == [s.step for s in steps if s.level > 0]
    ratios = [r.slowdown for r in rows if r.slowdown is not None]
    marked = [r for r in rows if r.worst]
    assert len(marked) == (1 if ratios else 0)
    if ratios:
        assert marked[0].slowdown == (min(ratios) if metric.higher_is_better else max(ratios))


def test_every_level_metric_is_kept_per_step():
    assert {m.key for m in LEVEL_METRICS} <= set(STEP_METRICS) and {m.key for m in LEVEL_METRICS} <= set(KEYS)


def test_an_open_loops_goodput_is_per_second_of_its_window_not_of_its_own_span():
    """The same 252 requests, all good, alone and shared: the shared phase's last one ends later,
    so request_goodput (over the requests' own span) falls; the window's goodput keeps all of it."""
    from gpushare.config import LoadConfig
    from gpushare.measure.results import TenantBlock

    load = LoadConfig(request_rate=4.0, duration_s=65.0, settle_s=2.0)
    solo = TenantBlock(load=load, good_requests=252, request_goodput=252 / 63.0, output_throughput=512.0)
    shared = TenantBlock(load=load, good_requests=252, request_goodput=252 / 63.9, output_throughput=505.0)
    rates = [Rates.of(block) for block in (solo, shared)]
    assert [r.goodput for r in rates] == [4.0, 4.0]
    score = score_tenant(TenantPhases(True, True, *rates))
    assert score.kept == 1.0 and score.scored_on == "goodput"
    half = TenantBlock(load=load, good_requests=126, request_goodput=126 / 63.0, output_throughput=512.0)
    assert score_tenant(TenantPhases(True, True, rates[0], Rates.of(half))).kept == 0.5
