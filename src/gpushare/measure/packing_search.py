"""The search for the fewest GPUs under the packing model (measure.packing).

Exact: every feasible group of every GPU model and placement is enumerated, depth first in
demand order; heredity prunes a branch at its first infeasible group. One column per tenant set
and GPU model (the placement with the most headroom) goes into a set-partition MILP solved by
HiGHS: each tenant in exactly one chosen column, each GPU model's columns at most its count,
cost 1 per GPU plus at most 0.5 / (tenants + 1) for a column's lack of headroom, so that
headroom breaks ties but never buys a GPU. Heuristic, when the columns are too many or the
solver finds nothing in its time: first-fit decreasing by least share, then emptying the GPUs
with the fewest tenants onto the others while that works. Both are deterministic.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Mapping

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from gpushare.measure.packing import (DEDICATED, EIGHTHS, PARTITIONED_PLACEMENTS, PLACEMENTS, SEVENTHS, BesideKey,
                                      GpuAssignment, GpuKind, Packing, PackingProblem, Unplaceable, least_shares,
                                      lower_bound, seat_capacities, smallest_slice)
from gpushare.measure.packing_bound import relaxed_bound


def headroom(assignment: GpuAssignment) -> float:
    """The least headroom of its seats, in [0, 1] (unknown counts 0)."""
    return min(min(1.0, max(0.0, s.headroom or 0.0)) for s in assignment.seats)


def _judged(problem: PackingProblem, gpu: str, placement: str, tenants: list[str]) -> GpuAssignment | None:
    seats = seat_capacities(problem, gpu, placement, tenants)
    return GpuAssignment(gpu, placement, seats) if seats is not None else None


def _alone(problem: PackingProblem, kind: GpuKind, tenant: str) -> GpuAssignment | None:
    """The tenant alone on a GPU of this kind, in the placement with the most headroom."""
    options = [a for p in (DEDICATED, *PARTITIONED_PLACEMENTS) if (a := _judged(problem, kind.model, p, [tenant]))]
    return max(options, key=headroom, default=None)


def _groups(problem: PackingProblem, kind: GpuKind, placement: str) -> Iterator[GpuAssignment]:
    """Every feasible group of two or more under a placement, depth first in demand order. A
    vectorised test of the model (a hair lenient) narrows each branch's candidates, the model
    itself (seat_capacities) decides, and an infeasible group ends its branch."""
    if placement in PARTITIONED_PLACEMENTS:
        seats = [smallest_slice(problem, d.name, kind, placement) for d in problem.demands]
        members = [i for i, s in enumerate(seats) if s.slice is not None]
        size = {s.name: s for s in kind.slices}
        compute = np.array([size[seats[i].slice].compute for i in members], dtype=float)
        memory = np.array([size[seats[i].slice].memory for i in members], dtype=float)
        largest = SEVENTHS

        def admits(group: list[int], candidates: np.ndarray) -> np.ndarray:
            return ((compute[candidates] <= SEVENTHS - compute[group].sum())
                    & (memory[candidates] <= EIGHTHS - memory[group].sum()))
    else:
        seats = [_judged(problem, kind.model, DEDICATED, [d.name]) for d in problem.demands]
        members = [i for i, s in enumerate(seats) if s is not None]
        alone = np.array([seats[i].seats[0].capacity for i in members])
        slack = alone - np.array([problem.demands[i].target for i in members]) / problem.counted
        lenient = 1e-9 * np.maximum(1.0, alone)
        loss = np.full((len(members), len(members)), np.inf)
        for a, i in enumerate(members):
            for b, j in enumerate(members):
                t, u = problem.demands[i], problem.demands[j]
                beside = problem.profiles.beside.get(BesideKey(t.name, u.name, kind.model, placement))
                if a == b or (beside is not None and (placement != "engine" or t.model == u.model)):
                    loss[a, b] = 0.0 if a == b else max(0.0, alone[a] - beside)
        largest = kind.max_tenants

        def admits(group: list[int], candidates: np.ndarray) -> np.ndarray:
            left = slack[group] - loss[np.ix_(group, group)].sum(axis=1) + lenient[group]
            return ((loss[np.ix_(group, candidates)] <= left[:, None]).all(axis=0)
                    & (loss[np.ix_(candidates, group)].sum(axis=1) <= slack[candidates] + lenient[candidates]))

    names = [problem.demands[i].name for i in members]

    def grow(group: list[int], candidates: np.ndarray) -> Iterator[GpuAssignment]:
        if len(group) >= largest or not len(candidates):
            return
        candidates = candidates[admits(group, candidates)]
        for at, extra in enumerate(candidates):
            bigger = [*group, int(extra)]
            judged = _judged(problem, kind.model, placement, [names[i] for i in bigger])
            if judged is not None:
                yield judged
                yield from grow(bigger, candidates[at + 1:])

    for first in range(len(members)):
        yield from grow([first], np.arange(first + 1, len(members)))


def columns(problem: PackingProblem, limit: int) -> list[GpuAssignment] | None:
    """Every feasible group, one per tenant set and GPU model; None when they are more than `limit`."""
    best: dict[tuple[str, frozenset[str]], GpuAssignment] = {}
    for kind in problem.usable:
        alone = [a for d in problem.demands if (a := _alone(problem, kind, d.name))]
        grouped = (a for p in kind.placements for a in _groups(problem, kind, p))
        proven = (a for g in problem.proven if g.gpu == kind.model
                  and (a := _judged(problem, g.gpu, g.placement, list(g.tenants))))
        for candidate in itertools.chain(alone, grouped, proven):  # lazily: the groups may be countless
            key = (candidate.gpu, candidate.key.tenants)
            if key not in best or headroom(candidate) > headroom(best[key]):
                best[key] = candidate
                if len(best) > limit:
                    return None
    return list(best.values())


def _set_partition(problem: PackingProblem, found: list[GpuAssignment], counts: Mapping[str, int],
                   time_limit_s: float) -> tuple[list[GpuAssignment] | None, bool, int, bool]:
    """The MILP: (chosen columns or None, optimal, a bound on the GPUs, infeasible)."""
    n = len(problem.demands)
    spare = 0.5 / (n + 1)
    cost = np.array([1.0 + spare * (1.0 - headroom(c)) for c in found])
    cells = [(problem.order[s.tenant], j) for j, c in enumerate(found) for s in c.seats]
    cover = csr_array((np.ones(len(cells)), tuple(np.array(cells).T)), shape=(n, len(found)))
    models = list(counts)
    use = csr_array((np.ones(len(found)), (np.array([models.index(c.gpu) for c in found]), np.arange(len(found)))),
                    shape=(len(models), len(found)))
    result = milp(cost, integrality=np.ones(len(found)), bounds=Bounds(0, 1),
                  constraints=[LinearConstraint(cover, 1, 1), LinearConstraint(use, 0, [counts[m] for m in models])],
                  options={"time_limit": time_limit_s, "disp": False})
    if result.x is None:
        return None, False, 0, result.status == 2
    chosen = [c for c, x in zip(found, result.x) if x > 0.5]
    optimal = result.status == 0
    dual = getattr(result, "mip_dual_bound", None)
    bound = len(chosen) if optimal else (math.ceil(dual - n * spare - 1e-9) if dual is not None and np.isfinite(dual) else 0)
    return chosen, optimal, bound, False


def _grown(problem: PackingProblem, onto: GpuAssignment, tenant: str) -> GpuAssignment | None:
    """`onto` with the tenant added, in its own placement or else the first other that holds everyone."""
    tenants = [s.tenant for s in onto.seats] + [tenant]
    for placement in (onto.placement, *(p for p in PLACEMENTS if p != onto.placement)):
        if (grown := _judged(problem, onto.gpu, placement, tenants)) is not None:
            return grown
    return None


def _first_fit(problem: PackingProblem, counts: Mapping[str, int]) -> list[GpuAssignment] | None:
    """First-fit decreasing by least share, then the improvement pass; None when the counts run out."""
    share = {d.name: min((c + m) / 2 for c, m in least_shares(problem, d.name) or [(1.0, 1.0)]) for d in problem.demands}
    left = dict(counts)
    opened: list[GpuAssignment] = []
    for d in sorted(problem.demands, key=lambda d: (-share[d.name], problem.order[d.name])):
        for at, gpu in enumerate(opened):
            if (grown := _grown(problem, gpu, d.name)) is not None:
                opened[at] = grown
                break
        else:
            fresh = [(headroom(a), left[k.model], -i, a) for i, k in enumerate(problem.usable)
                     if left.get(k.model, 0) > 0 and (a := _alone(problem, k, d.name)) is not None]
            if not fresh:
                return None
            chosen = max(fresh, key=lambda f: f[:3])[3]
            left[chosen.gpu] -= 1
            opened.append(chosen)
    while (emptied := _emptied(problem, opened)) is not None:
        opened = emptied
    return opened


def _emptied(problem: PackingProblem, opened: list[GpuAssignment]) -> list[GpuAssignment] | None:
    """The packing with one GPU fewer, its tenants moved first fit onto the others, trying the
    GPUs with the fewest tenants first; None when no GPU can be emptied so."""
    for victim in sorted(range(len(opened)), key=lambda i: (len(opened[i].seats), -i)):
        rest = [g for i, g in enumerate(opened) if i != victim]
        for seat in opened[victim].seats:
            at = next((i for i, g in enumerate(rest) if _grown(problem, g, seat.tenant) is not None), None)
            if at is None:
                break
            rest[at] = _grown(problem, rest[at], seat.tenant)
        else:
            return rest
    return None


def _unplaceable_tenant(problem: PackingProblem) -> Unplaceable | None:
    """The first tenant that fits on no GPU the fleet has, alone or in a proven group."""
    usable = {k.model for k in problem.usable}
    in_proven = {t for g in problem.proven if g.gpu in usable and seat_capacities(problem, *g) for t in g.tenants}
    for d in problem.demands:
        if d.name in in_proven or any(_alone(problem, k, d.name) for k in problem.usable):
            continue
        known = sorted(((c, k) for k, c in problem.profiles.alone.items() if k.tenant == d.name and k.gpu in usable),
                       key=lambda ck: (-ck[0], ck[1].gpu, ck[1].placement, ck[1].slice or ""))
        if not known:
            return Unplaceable(d.name, f"{d.name}: target {d.target:g} has no measured capacity on any GPU the fleet has")
        capacity, key = known[0]
        if problem.counted * capacity >= d.target:
            return Unplaceable(d.name, f"{d.name}: target {d.target:g} was refuted by a proof run on every GPU "
                                       f"it fits alone (best {capacity:.3g} on {key.gpu} {key.placement})")
        where = f"{key.gpu} {key.placement}" + (f" {key.slice}" if key.slice else "")
        counted = f", {problem.counted * capacity:.3g} after the {problem.margin * 100:g} % margin" if problem.margin else ""
        return Unplaceable(d.name, f"{d.name}: target {d.target:g} exceeds its capacity on every GPU even alone "
                                   f"(best {capacity:.3g} on {where}{counted})")
    return None


def _fleet_too_small(problem: PackingProblem, needed: list[GpuAssignment]) -> Unplaceable:
    def per_model(count: dict[str, int]) -> str:
        return ", ".join(f"{n} {model}" for model, n in count.items())
    wanted = {k.model: sum(a.gpu == k.model for a in needed) for k in problem.usable}
    has = {k.model: k.count for k in problem.gpus}
    return Unplaceable(None, f"the fleet is too small: the best packing found needs {len(needed)} GPUs "
                             f"({per_model(wanted)}); the fleet has {sum(has.values())} ({per_model(has)})")


def _sorted(problem: PackingProblem, assignments: list[GpuAssignment]) -> tuple[GpuAssignment, ...]:
    models = [k.model for k in problem.gpus]
    return tuple(sorted(assignments, key=lambda a: (models.index(a.gpu), problem.order[a.seats[0].tenant])))


def solve(problem: PackingProblem, exact_columns: int = 20000, time_limit_s: float = 20.0) -> Packing:
    """The packing with the fewest GPUs: exact when the feasible groups number at most
    `exact_columns` and HiGHS finds a solution within `time_limit_s`, else the heuristic's.
    Raises Unplaceable when no packing exists."""
    if (alone := _unplaceable_tenant(problem)) is not None:
        raise alone
    bound, n = max(lower_bound(problem), relaxed_bound(problem)), len(problem.demands)
    counts = {k.model: k.count for k in problem.usable}
    unlimited = {k.model: n for k in problem.usable}
    found = columns(problem, exact_columns)
    if found is not None and n:
        chosen, optimal, solver_bound, infeasible = _set_partition(problem, found, counts, time_limit_s)
        if infeasible:
            needed = _set_partition(problem, found, unlimited, time_limit_s)[0] or _first_fit(problem, unlimited)
            raise _fleet_too_small(problem, needed or [])
        if chosen is not None:
            return Packing(_sorted(problem, chosen), max(bound, solver_bound), n, "exact", optimal)
    packed = _first_fit(problem, counts)
    if packed is None:
        raise _fleet_too_small(problem, _first_fit(problem, unlimited) or [])
    return Packing(_sorted(problem, packed), bound, n, "heuristic", len(packed) == bound)
