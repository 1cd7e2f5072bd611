"""The packing model and its search, against an independent reading of the model's formula:
every plan holds every seat's measured capacity (margin applied), never uses more GPUs than one
per tenant nor fewer than its bound, the exact search finds the brute-force optimum, and the
heuristic is valid, never better than it and at most one GPU worse on small problems."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpushare.measure.packing import (PARTITIONED_PLACEMENTS, PLACEMENTS, SHARED_PLACEMENTS, AloneKey, BesideKey,
                                      Demand, GpuKind, GroupKey, Packing, PackingProblem, Profiles, Slice,
                                      Unplaceable, lower_bound, missing_profiles, seat_capacities)
from gpushare.measure.packing_bound import relaxed_bound
from gpushare.measure.packing_search import solve

H200_SLICES = (Slice("1g.18gb", 1, 1), Slice("2g.35gb", 2, 2), Slice("3g.71gb", 3, 4), Slice("4g.71gb", 4, 4),
               Slice("7g.141gb", 7, 8))


def modelled(problem: PackingProblem, gpu: str, placement: str, group: list[str], tenant: str,
             slice_name: str | None) -> float | None:
    """The tenant's capacity in the group as the model's formula states it; None: unknown."""
    alone, beside = problem.profiles.alone, problem.profiles.beside
    if placement in PARTITIONED_PLACEMENTS:
        return alone.get(AloneKey(tenant, gpu, placement, slice_name))
    own = alone.get(AloneKey(tenant, gpu, "dedicated", None))
    others = [beside.get(BesideKey(tenant, u, gpu, placement)) for u in group if u != tenant]
    if own is None or None in others:
        return None
    return own - sum(max(0.0, own - b) for b in others)


def holds(problem: PackingProblem, target: float, capacity: float | None) -> bool:
    return capacity is not None and target <= (1 - problem.margin) * capacity


def group_allowed(problem: PackingProblem, gpu: str, placement: str, group: list[str]) -> bool:
    kind = next(k for k in problem.gpus if k.model == gpu)
    if any(r.gpu == gpu and r.placement == placement and r.tenants <= set(group) for r in problem.refuted):
        return False
    if placement == "dedicated":
        return len(group) == 1
    if placement not in kind.placements or (placement in SHARED_PLACEMENTS and len(group) > kind.max_tenants):
        return False
    models = {d.model for d in problem.demands if d.name in group}
    return (placement != "engine" or len(models) == 1) and (placement in SHARED_PLACEMENTS or bool(kind.slices))


def group_fits(problem: PackingProblem, gpu: str, placement: str, group: list[str]) -> bool:
    """The model, read afresh: whether one GPU holds the group (refuted and proven honoured)."""
    if not group_allowed(problem, gpu, placement, group):
        return False
    if GroupKey(gpu, placement, frozenset(group)) in problem.proven:
        return True
    target = {d.name: d.target for d in problem.demands}
    kind = next(k for k in problem.gpus if k.model == gpu)
    if placement in PARTITIONED_PLACEMENTS:
        sizes = []
        for t in group:
            fitting = [s for s in kind.slices if holds(problem, target[t], modelled(problem, gpu, placement, group, t, s.name))]
            if not fitting:
                return False
            sizes.append(min(fitting, key=lambda s: (s.compute, s.memory)))
        return sum(s.compute for s in sizes) <= 7 and sum(s.memory for s in sizes) <= 8
    shared = "dedicated" if len(group) == 1 else placement
    return all(holds(problem, target[t], modelled(problem, gpu, shared, group, t, None)) for t in group)


def check_packing(problem: PackingProblem, packing: Packing) -> None:
    """Every seat holds its modelled capacity with the margin applied, every tenant is placed
    once, no GPU model is used beyond its count, no refuted group (or superset) appears."""
    placed = [s.tenant for a in packing.assignments for s in a.seats]
    assert sorted(placed) == sorted(d.name for d in problem.demands)
    for kind in problem.gpus:
        assert sum(a.gpu == kind.model for a in packing.assignments) <= kind.count
    target = {d.name: d.target for d in problem.demands}
    for a in packing.assignments:
        group = [s.tenant for s in a.seats]
        assert group_allowed(problem, a.gpu, a.placement, group), a
        proven = GroupKey(a.gpu, a.placement, frozenset(group)) in problem.proven
        if a.placement in PARTITIONED_PLACEMENTS:
            kind = next(k for k in problem.gpus if k.model == a.gpu)
            used = [next(s for s in kind.slices if s.name == seat.slice) for seat in a.seats if seat.slice]
            assert proven or (sum(s.compute for s in used) <= 7 and sum(s.memory for s in used) <= 8)
        for seat in a.seats:
            placement = "dedicated" if len(group) == 1 and a.placement in SHARED_PLACEMENTS else a.placement
            capacity = modelled(problem, a.gpu, placement, group, seat.tenant, seat.slice)
            if proven and seat.capacity is None:
                continue
            assert seat.target == target[seat.tenant]
            assert capacity is not None and seat.capacity == pytest.approx(capacity, rel=1e-12)
            assert seat.target <= (1 - problem.margin) * capacity * (1 + 1e-9)
            assert seat.headroom == pytest.approx(1 - seat.target / ((1 - problem.margin) * capacity), abs=1e-9)
    assert packing.lower_bound <= packing.gpus_used <= packing.dedicated == len(problem.demands)


def set_partitions(items: list[str]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for i in range(len(partition)):
            yield [*partition[:i], [first, *partition[i]], *partition[i + 1:]]


def brute_force(problem: PackingProblem) -> int | None:
    """The fewest GPUs over every set partition and every choice of GPU model per block."""
    best = None
    usable = [k for k in problem.gpus if k.count > 0]
    for partition in set_partitions([d.name for d in problem.demands]):
        if best is not None and len(partition) >= best:
            continue
        choices = [[k.model for k in usable if any(group_fits(problem, k.model, p, block)
                                                    for p in ("dedicated", *PLACEMENTS))] for block in partition]
        for pick in itertools.product(*choices):
            if all(pick.count(k.model) <= k.count for k in usable):
                best = len(partition)
                break
    return best


@st.composite
def problems(draw, most: int = 6):
    """Small random problems: capacities drawn continuous so that no judgement sits on a tie."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, most))
    demands = tuple(Demand(f"t{i}", draw(st.sampled_from(["m1", "m2"])), float(rng.uniform(0.1, 1.2))) for i in range(n))
    kinds = []
    for model in ["H200", "H100"][: draw(st.integers(1, 2))]:
        placements = tuple(p for p in PLACEMENTS if draw(st.booleans()))
        slices = tuple(s for s in H200_SLICES if draw(st.booleans())) if set(placements) & set(PARTITIONED_PLACEMENTS) else ()
        kinds.append(GpuKind(model, draw(st.integers(0, 6)), placements, slices, draw(st.integers(1, 4))))
    alone, beside = {}, {}
    for kind in kinds:
        for t in demands:
            own = float(rng.uniform(0.8, 4.0))
            if rng.random() > 0.02:
                alone[AloneKey(t.name, kind.model, "dedicated", None)] = own
            for p in PARTITIONED_PLACEMENTS:
                for s in H200_SLICES:
                    if rng.random() > 0.1:
                        alone[AloneKey(t.name, kind.model, p, s.name)] = own * s.compute / 7 * float(rng.uniform(0.8, 1.3))
            for u in demands:
                for p in SHARED_PLACEMENTS:
                    if u != t and rng.random() > 0.1:
                        beside[BesideKey(t.name, u.name, kind.model, p)] = own * float(rng.uniform(0.4, 1.05))
    names = [d.name for d in demands]
    refuted = tuple(GroupKey(k.model, draw(st.sampled_from(PLACEMENTS)),
                             frozenset(draw(st.lists(st.sampled_from(names), min_size=2, max_size=3))))
                    for k in kinds if len(names) > 1 and draw(st.booleans()))
    proven = tuple(GroupKey(k.model, draw(st.sampled_from(PLACEMENTS)),
                            frozenset(draw(st.lists(st.sampled_from(names), min_size=2, max_size=4))))
                   for k in kinds if len(names) > 1 and draw(st.integers(0, 3)) == 0)
    margin = draw(st.sampled_from([0.0, 0.1, 0.25]))
    return PackingProblem(demands, tuple(kinds), Profiles(alone, beside), margin, refuted, proven)


def solved(problem: PackingProblem, **how) -> Packing | Unplaceable:
    try:
        return solve(problem, **how)
    except Unplaceable as why:
        return why


@settings(max_examples=120, deadline=None)
@given(problem=problems())
def test_the_exact_packing_is_valid_and_equals_the_brute_force_optimum(problem):
    packing, optimum = solved(problem), brute_force(problem)
    if isinstance(packing, Unplaceable):
        assert optimum is None, str(packing)
        return
    check_packing(problem, packing)
    assert packing.method == "exact" and packing.optimal
    assert packing.gpus_used == optimum
    assert lower_bound(problem) <= optimum and relaxed_bound(problem) <= optimum
    assert solve(problem) == packing  # deterministic


@settings(max_examples=120, deadline=None)
@given(problem=problems(most=7))
def test_the_heuristic_is_valid_and_never_beats_the_exact_optimum(problem):
    exact, heuristic = solved(problem), solved(problem, exact_columns=0)
    if isinstance(exact, Unplaceable):
        assert isinstance(heuristic, Unplaceable) and heuristic.tenant == exact.tenant
        return
    if isinstance(heuristic, Unplaceable):  # first fit may run out of a model the optimum uses sparingly
        assert heuristic.tenant is None and "the fleet has" in str(heuristic)
        return
    check_packing(problem, heuristic)
    assert heuristic.method == "heuristic"
    assert exact.lower_bound <= exact.gpus_used <= heuristic.gpus_used <= exact.gpus_used + 1
    assert solve(problem, exact_columns=0) == heuristic


@settings(max_examples=80, deadline=None)
@given(problem=problems())
def test_missing_profiles_asks_for_all_the_search_needs_within_two_rounds(problem):
    truth = problem.profiles
    asked = PackingProblem(problem.demands, problem.gpus, Profiles({}, {}), problem.margin, problem.refuted, problem.proven)
    for _ in range(2):
        alone, beside = missing_profiles(asked)
        assert len(set(alone)) == len(alone) and len(set(beside)) == len(beside)
        measured = Profiles({**asked.profiles.alone, **{k: truth.alone[k] for k in alone if k in truth.alone}},
                            {**asked.profiles.beside, **{k: truth.beside[k] for k in beside if k in truth.beside}})
        asked = PackingProblem(asked.demands, asked.gpus, measured, asked.margin, asked.refuted, asked.proven)
    # what the truth lacks stays missing: it is unmeasurable here, not forgotten
    alone, beside = missing_profiles(asked)
    assert all(k not in truth.alone for k in alone) and all(k not in truth.beside for k in beside)
    full, partial = solved(problem), solved(asked)
    if isinstance(full, Unplaceable):
        assert isinstance(partial, Unplaceable) and partial.tenant == full.tenant
    else:
        assert not isinstance(partial, Unplaceable) and partial.gpus_used == full.gpus_used


def pairs_problem(margin: float = 0.0, count: int = 4) -> PackingProblem:
    """Four tenants of one model, capacity 10 alone, target 6: {a, b} and {c, d} lose 1 to each
    other, every other pair 5, so pairs {a, b} and {c, d} hold and no triple does."""
    names = "abcd"
    alone = {AloneKey(t, "H200", "dedicated", None): 10.0 for t in names}
    beside = {BesideKey(t, u, "H200", "engine"): 9.0 if {t, u} in ({"a", "b"}, {"c", "d"}) else 5.0
              for t in names for u in names if t != u}
    return PackingProblem(tuple(Demand(t, "llama", 6.0) for t in names), (GpuKind("H200", count, ("engine",)),),
                          Profiles(alone, beside), margin)


def test_two_good_pairs_pack_four_tenants_onto_two_gpus_and_a_margin_undoes_it():
    packing = solve(pairs_problem())
    assert (packing.gpus_used, packing.lower_bound, packing.method, packing.optimal) == (2, 2, "exact", True)
    assert {a.key.tenants for a in packing.assignments} == {frozenset("ab"), frozenset("cd")}
    assert all(s.capacity == 9.0 and s.headroom == pytest.approx(1 / 3) for a in packing.assignments for s in a.seats)
    assert seat_capacities(pairs_problem(), "H200", "engine", "abc") is None
    check_packing(pairs_problem(), packing)
    heuristic = solve(pairs_problem(), exact_columns=0)
    assert heuristic.gpus_used == 2 and heuristic.method == "heuristic" and heuristic.optimal
    strict = solve(pairs_problem(margin=0.4))  # 0.6 x 9 < 6 <= 0.6 x 10
    assert strict.gpus_used == 4 and strict.lower_bound == 4 and {a.placement for a in strict.assignments} == {"dedicated"}


def test_refuted_and_proven_groups_override_the_model():
    base = pairs_problem()
    refuted = PackingProblem(base.demands, base.gpus, base.profiles, refuted=(GroupKey("H200", "engine", frozenset("ab")),))
    packing = solve(refuted)
    assert packing.gpus_used == 3 and frozenset("ab") not in {a.key.tenants for a in packing.assignments}
    proven = PackingProblem(base.demands, base.gpus, base.profiles, proven=(GroupKey("H200", "engine", frozenset("abc")),))
    seats = seat_capacities(proven, "H200", "engine", "abc")
    assert [s.capacity for s in seats] == [None, None, None] and [s.headroom for s in seats] == [None, None, None]
    assert solve(proven).gpus_used == 2


def test_slices_pack_by_their_sevenths_and_eighths():
    names = ["a", "b", "c"]
    kind = GpuKind("H200", 3, ("mig",), H200_SLICES)
    alone = {AloneKey(t, "H200", "dedicated", None): 10.0 for t in names}
    need = {"a": "3g.71gb", "b": "3g.71gb", "c": "1g.18gb"}
    for t in names:
        for s in H200_SLICES:
            alone[AloneKey(t, "H200", "mig", s.name)] = 5.0 if s.compute >= int(need[t][0]) else 1.0
    problem = PackingProblem(tuple(Demand(t, "llama", 4.0) for t in names), (kind,), Profiles(alone, {}))
    seats = seat_capacities(problem, "H200", "mig", ["a", "b"])
    assert [s.slice for s in seats] == ["3g.71gb", "3g.71gb"]
    assert seat_capacities(problem, "H200", "mig", names) is None  # 7 sevenths, but 9 eighths
    packing = solve(problem)
    assert packing.gpus_used == 2 and lower_bound(problem) == 2  # memory's eighths bound it, not compute's
    check_packing(problem, packing)


def test_missing_profiles_asks_alone_first_then_the_pairs_that_could_share():
    problem = pairs_problem()
    empty = PackingProblem(problem.demands, problem.gpus, Profiles({}, {}))
    alone, beside = missing_profiles(empty)
    assert alone == [AloneKey(t, "H200", "dedicated", None) for t in "abcd"] and beside == []
    half = PackingProblem(problem.demands, problem.gpus, Profiles(problem.profiles.alone, {}))
    assert missing_profiles(half) == ([], sorted(problem.profiles.beside, key=lambda k: (k.tenant, k.neighbour)))
    assert missing_profiles(problem) == ([], [])


def test_a_target_above_every_alone_capacity_names_the_tenant():
    problem = pairs_problem(margin=0.1)
    alone = {**problem.profiles.alone, AloneKey("c", "H200", "dedicated", None): 6.5}
    problem = PackingProblem(problem.demands, problem.gpus, Profiles(alone, problem.profiles.beside), 0.1)
    with pytest.raises(Unplaceable) as raised:
        solve(problem)
    assert raised.value.tenant == "c"
    assert str(raised.value) == ("c: target 6 exceeds its capacity on every GPU even alone "
                                 "(best 6.5 on H200 dedicated, 5.85 after the 10 % margin)")


def test_a_fleet_too_small_says_how_many_gpus_it_takes():
    for solve_with in ({}, {"exact_columns": 0}):
        with pytest.raises(Unplaceable) as raised:
            solve(pairs_problem(count=1), **solve_with)
        assert raised.value.tenant is None
        assert str(raised.value) == ("the fleet is too small: the best packing found needs 2 GPUs (2 H200); "
                                     "the fleet has 1 (1 H200)")


def test_a_tenant_refuted_alone_everywhere_says_a_proof_run_refuted_it():
    base = pairs_problem()
    refuted = (GroupKey("H200", "dedicated", frozenset("c")),)
    problem = PackingProblem(base.demands, base.gpus, base.profiles, refuted=refuted)
    with pytest.raises(Unplaceable) as raised:
        solve(problem)
    assert raised.value.tenant == "c"
    assert str(raised.value) == "c: target 6 was refuted by a proof run on every GPU it fits alone (best 10 on H200 dedicated)"
