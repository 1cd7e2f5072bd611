"""The capacity search's own logic, against truths we choose: it must converge on a monotone
truth within its tolerance and budget, and say unresolved (never give a wrong bound) where
the truth straddles the target."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpushare.measure.capacity_search import (Knob, Probe, SearchSpec, judge, least_level_holding, next_probe,
                                              requests_to_resolve, results, wilson)


def run_search(spec: SearchSpec, attainment, n_base: int, rng=None) -> tuple[list, list[Probe]]:
    """Drive the search against a truth: attainment(level) -> the share of good requests."""
    probes: list[Probe] = []
    while (wanted := next_probe(spec, probes)) is not None:
        total = n_base * 2 ** wanted.window
        p = attainment(wanted.level)
        good = int(rng.binomial(total, p)) if rng is not None else round(p * total)
        probes.append(Probe(wanted.level, wanted.window, good, total))
        assert len(probes) <= spec.budget
    return results(spec, probes), probes


def test_wilson_matches_its_closed_form_and_the_windows_the_issue_states():
    low, high = wilson(95, 100)
    assert low == pytest.approx(0.8882, abs=1e-4) and high == pytest.approx(0.9785, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert requests_to_resolve(0.99) == 381 and requests_to_resolve(0.9) == 35
    assert wilson(381, 381)[0] >= 0.99 > wilson(380, 380)[0]
    assert judge(381, 381, 0.99) == "feasible" and judge(370, 381, 0.99) == "infeasible"
    assert judge(379, 381, 0.99) == "unresolved"


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 200), start=st.integers(1, 64), targets=st.sampled_from([(0.99,), (0.9, 0.99)]))
def test_a_monotone_truth_in_concurrency_is_found_exactly_within_the_budget(capacity, start, targets):
    knob = Knob("concurrency", 1, floor=1, ceiling=512)
    spec = SearchSpec(knob, targets, float(start), budget=40)
    found, probes = run_search(spec, lambda c: 1.0 if c <= capacity else 0.0, requests_to_resolve(max(targets)))
    for result in found:
        assert result.resolved, result.why
        assert result.capacity == capacity and result.first_infeasible == capacity + 1
    assert len(probes) <= 2 * math.ceil(math.log2(512)) + 2
    assert len({(p.level, p.window) for p in probes}) == len(probes)  # no probe measured twice


@settings(max_examples=200, deadline=None)
@given(capacity=st.floats(0.05, 90.0), start=st.floats(0.1, 20.0), tolerance=st.sampled_from([0.05, 0.1, 0.2]))
def test_a_monotone_truth_in_rate_is_bracketed_within_the_tolerance(capacity, start, tolerance):
    knob = Knob("request_rate", tolerance, floor=0.01, ceiling=100.0)
    spec = SearchSpec(knob, (0.99,), start, budget=30)
    (result,), _ = run_search(spec, lambda r: 1.0 if r <= capacity else 0.0, requests_to_resolve(0.99))
    assert result.resolved, result.why
    assert result.capacity <= capacity < result.first_infeasible
    assert result.first_infeasible - result.capacity <= tolerance * result.capacity * 1.0001


def test_an_infeasible_floor_and_a_feasible_ceiling_are_said_as_such():
    knob = Knob("concurrency", 1, floor=1, ceiling=16)
    (nothing,), _ = run_search(SearchSpec(knob, (0.99,), 4, 20), lambda c: 0.0, 400)
    assert nothing.capacity == 0 and nothing.first_infeasible == 1 and nothing.resolved
    (everything,), _ = run_search(SearchSpec(knob, (0.99,), 4, 20), lambda c: 1.0, 400)
    assert everything.capacity == 16 and everything.first_infeasible is None and not everything.resolved
    assert "ceiling" in everything.why


@settings(max_examples=100, deadline=None)
@given(low=st.integers(2, 30), width=st.integers(1, 20), start=st.integers(1, 40))
def test_a_truth_that_straddles_the_target_is_reported_unresolved_not_bounded(low, width, start):
    """Good below `low`, exactly at the target over [low, low + width), bad above: a straddling
    level is never proven either way, so it must never be given as a bound."""
    target = 0.99
    truth = lambda c: 1.0 if c < low else target if c < low + width else 0.0  # noqa: E731
    spec = SearchSpec(Knob("concurrency", 1, floor=1, ceiling=256), (target,), float(start), budget=30)
    (result,), probes = run_search(spec, truth, requests_to_resolve(target))
    assert result.capacity is not None and result.capacity < low
    assert result.first_infeasible is None or result.first_infeasible >= low + width
    assert not result.resolved
    straddled = [p for p in probes if low <= p.level < low + width]
    assert all(p.judged(target) == "unresolved" for p in straddled)
    assert any(p.window == spec.max_window for p in straddled)  # it tried longer windows first


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_a_noisy_truth_is_never_given_a_clearly_wrong_bound(scale):
    """Binomial noise on a smooth curve. A bound is wrong when the true attainment at the
    reported capacity is below the target, or at first_infeasible at or above it. Each
    judgement's interval misses the truth on its side 2.5 % of the time, so a wrong bound may
    come only from a level whose truth is close to the target, and rarely."""
    rng = np.random.default_rng(7)
    target, wrong = 0.95, []
    curve = lambda c: 1.0 / (1.0 + math.exp((c - 20.5) / scale))  # noqa: E731
    for _ in range(300):
        spec = SearchSpec(Knob("concurrency", 1, floor=1, ceiling=128), (target,), 8.0, budget=20)
        (result,), _ = run_search(spec, curve, requests_to_resolve(target), rng)
        if result.capacity and curve(result.capacity) < target:
            wrong.append(curve(result.capacity))
        if result.first_infeasible and curve(result.first_infeasible) >= target:
            wrong.append(curve(result.first_infeasible))
    assert len(wrong) <= 30
    assert all(abs(truth - target) < 0.05 for truth in wrong), wrong


def test_a_non_monotone_outcome_is_reported_never_smoothed():
    # feasible at 1, 2 and 8; infeasible at 4: the truth itself is not monotone
    truth = {1: 1.0, 2: 1.0, 4: 0.0, 8: 1.0, 3: 1.0, 16: 0.0}
    spec = SearchSpec(Knob("concurrency", 1, floor=1, ceiling=64), (0.99,), 1.0, budget=20)
    probes = [Probe(level, 0, round(truth[level] * 400), 400) for level in (1.0, 2.0, 4.0, 8.0)]
    (result,) = results(spec, probes)
    assert result.non_monotone == (4.0, 8.0) and not result.resolved
    assert result.capacity == 2.0 and result.first_infeasible == 4.0


def test_targets_share_probes_and_each_gets_its_own_capacity():
    truth = lambda c: 1.0 if c <= 6 else 0.95 if c <= 12 else 0.0  # noqa: E731
    spec = SearchSpec(Knob("concurrency", 1, floor=1, ceiling=64), (0.9, 0.99), 2.0, budget=30)
    (loose, strict), probes = run_search(spec, truth, requests_to_resolve(0.99))
    assert (loose.capacity, loose.first_infeasible) == (12, 13)
    assert (strict.capacity, strict.first_infeasible) == (6, 7)
    assert loose.resolved and strict.resolved
    alone = [run_search(SearchSpec(spec.knob, (t,), 2.0, 30), truth, requests_to_resolve(0.99))[1] for t in (0.9, 0.99)]
    assert len(probes) < sum(map(len, alone))


def test_a_resumed_search_asks_for_the_same_probes():
    spec = SearchSpec(Knob("request_rate", 0.1, floor=0.01, ceiling=50), (0.99,), 1.0, budget=25)
    _, probes = run_search(spec, lambda r: 1.0 if r <= 3.3 else 0.0, 400)
    for cut in range(len(probes)):
        wanted = next_probe(spec, probes[:cut])
        assert (wanted.level, wanted.window) == (probes[cut].level, probes[cut].window)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["request_rate", "concurrency"]), target=st.floats(0.01, 500.0),
       margin=st.floats(0.0, 0.9))
def test_the_least_level_holding_a_target_is_on_the_grid_holds_it_and_is_the_least(kind, target, margin):
    """The level a plan's search starts at: one the search probes as given (snap leaves it), at
    which only (1 - margin) of the capacity still holds the target, and the grid's level below
    it (one fewer in flight; a rate one unit lower in its third significant figure) does not."""
    counted = 1 - margin
    level = least_level_holding(kind, target, counted)
    assert Knob(kind, 0.1, 0.01, 10_000.0).snap(level) == level
    assert counted * level >= target
    if kind == "concurrency":
        below = level - 1
    else:
        below = float(f"{level - 10.0 ** (math.floor(math.log10(level * (1 - 1e-12))) - 2):.3g}")
    assert below < level
    if below >= 1 or kind == "request_rate":
        assert counted * below < target
