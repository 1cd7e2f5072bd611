"""The packing model behind `gpushare plan`: which groups of tenants one GPU holds, judged from
measured capacities, and how few GPUs any packing can use.

A tenant's capacity is measured in the unit of its target (req/s open loop, concurrency closed
loop). Only (1 - margin) of a modelled capacity counts. A group is judged on one GPU of model g
under one placement:

* Alone on the whole GPU ("dedicated"), tenant t holds iff
  target_t <= (1 - margin) * C_t, with C_t = alone[(t, g, "dedicated", None)].
  A group of one under a shared placement is this case.
* A group under a shared placement P (engine, timeslice, mps; allowed on g; at most g's
  max_tenants; under "engine" every tenant serves the same model) holds iff every tenant t does:
  target_t <= (1 - margin) * (C_t - sum over neighbours u of max(0, C_t - beside[(t, u, g, P)])).
  Each neighbour takes away what it took in the pair's measurement, with the neighbour at its
  own target: exact for a pair, an additive model for three or more, kept honest by proof runs.
* A group under a partitioned placement P (mig, mig_emulation) gives each tenant the smallest
  of g's slices (fewest compute, then memory) in which target_t <= (1 - margin) *
  alone[(t, g, P, slice)], and holds iff the slices' compute sums to at most 7 sevenths and their
  memory to at most 8 eighths: a simplification of real MIG layouts, which also fix positions.

A profile entry the judgement needs but that is absent is unknown and counts as not holding;
`missing_profiles` names such entries so they are measured first. A refuted group (a proof run
failed) makes every group of the same model and placement holding all its tenants infeasible; a
proven group (a proof run held) is feasible as it stands whatever the model says. Under the
model, feasibility is hereditary: every subset of a feasible group is feasible, since losses only
add and slices only sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Mapping, NamedTuple

SHARED_PLACEMENTS = ("engine", "timeslice", "mps")
"""Judged by the pairwise, additive-loss model."""
PARTITIONED_PLACEMENTS = ("mig", "mig_emulation")
"""Judged by the slice model."""
PLACEMENTS = SHARED_PLACEMENTS + PARTITIONED_PLACEMENTS
DEDICATED = "dedicated"
"""One tenant's server on a whole GPU: allowed on every GPU model."""
SEVENTHS, EIGHTHS = 7, 8


@dataclass(frozen=True)
class Demand:
    name: str
    model: str
    """Its served model: an "engine" GPU holds tenants of one model only."""
    target: float


@dataclass(frozen=True)
class Slice:
    name: str
    compute: int
    """Sevenths of the GPU's compute."""
    memory: int
    """Eighths of its memory."""


@dataclass(frozen=True)
class GpuKind:
    model: str
    count: int
    placements: tuple[str, ...]
    slices: tuple[Slice, ...] = ()
    max_tenants: int = 8
    """The most tenants one GPU holds under a shared placement (its servers' memory)."""

    @cached_property
    def smallest_first(self) -> tuple[Slice, ...]:
        return tuple(sorted(self.slices, key=lambda s: (s.compute, s.memory, s.name)))


class AloneKey(NamedTuple):
    """A tenant alone on a GPU of model `gpu`: the whole GPU ("dedicated", slice None), or one
    slice under a partitioned placement."""
    tenant: str
    gpu: str
    placement: str
    slice: str | None


class BesideKey(NamedTuple):
    """A tenant sharing a GPU under a shared placement with `neighbour` at the neighbour's target."""
    tenant: str
    neighbour: str
    gpu: str
    placement: str


@dataclass(frozen=True)
class Profiles:
    alone: Mapping[AloneKey, float]
    """Measured capacities, in the unit of the tenant's target; 0.0: not even the lowest level holds."""
    beside: Mapping[BesideKey, float]


class GroupKey(NamedTuple):
    gpu: str
    placement: str
    tenants: frozenset[str]


@dataclass(frozen=True)
class PackingProblem:
    demands: tuple[Demand, ...]
    gpus: tuple[GpuKind, ...]
    profiles: Profiles
    margin: float = 0.0
    """Only (1 - margin) x a modelled capacity counts."""
    refuted: tuple[GroupKey, ...] = ()
    proven: tuple[GroupKey, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin {self.margin} is not in [0, 1)")
        if len({d.name for d in self.demands}) != len(self.demands):
            raise ValueError("two demands share a name")
        if len({g.model for g in self.gpus}) != len(self.gpus):
            raise ValueError("two GPU kinds share a model")
        for d in self.demands:
            if not d.target > 0:
                raise ValueError(f"{d.name}: target {d.target} is not positive")
        for g in self.gpus:
            unknown = set(g.placements) - set(PLACEMENTS)
            if g.count < 0 or unknown or g.max_tenants < 1:
                raise ValueError(f"{g.model}: count {g.count}, placements {g.placements}, max_tenants {g.max_tenants}")
            for s in g.slices:
                if not (1 <= s.compute <= SEVENTHS and 1 <= s.memory <= EIGHTHS):
                    raise ValueError(f"{g.model} slice {s.name}: {s.compute}/7 compute, {s.memory}/8 memory")

    @property
    def counted(self) -> float:
        """The share of a modelled capacity that counts."""
        return 1.0 - self.margin

    @cached_property
    def demand(self) -> dict[str, Demand]:
        return {d.name: d for d in self.demands}

    @cached_property
    def order(self) -> dict[str, int]:
        """Each tenant's place in `demands`, which orders every group's seats."""
        return {d.name: i for i, d in enumerate(self.demands)}

    @cached_property
    def kind(self) -> dict[str, GpuKind]:
        return {g.model: g for g in self.gpus}

    @property
    def usable(self) -> tuple[GpuKind, ...]:
        """The GPU models the fleet has at least one of."""
        return tuple(g for g in self.gpus if g.count > 0)


@dataclass(frozen=True)
class Seat:
    tenant: str
    slice: str | None
    target: float
    capacity: float | None
    """The modelled capacity there, before the margin; None in a proven group whose model says it does not hold."""
    headroom: float | None
    """1 - target / ((1 - margin) x capacity)."""


@dataclass(frozen=True)
class GpuAssignment:
    gpu: str
    placement: str
    seats: tuple[Seat, ...]

    @property
    def key(self) -> GroupKey:
        return GroupKey(self.gpu, self.placement, frozenset(s.tenant for s in self.seats))


@dataclass(frozen=True)
class Packing:
    assignments: tuple[GpuAssignment, ...]
    lower_bound: int
    """No packing under the model uses fewer GPUs."""
    dedicated: int
    """One GPU per tenant."""
    method: str
    """"exact" (a MILP over every feasible group) or "heuristic"."""
    optimal: bool

    @property
    def gpus_used(self) -> int:
        return len(self.assignments)


class Unplaceable(ValueError):
    """No packing exists: `tenant` fits on no GPU even alone, or (None) the fleet is too small."""

    def __init__(self, tenant: str | None, message: str):
        super().__init__(message)
        self.tenant = tenant


def _seat(problem: PackingProblem, tenant: str, slice_name: str | None, capacity: float | None) -> Seat:
    target = problem.demand[tenant].target
    holds = capacity is not None and target <= problem.counted * capacity
    return Seat(tenant, slice_name, target, capacity if holds else None,
                1.0 - target / (problem.counted * capacity) if holds else None)


def _dedicated_seat(problem: PackingProblem, tenant: str, gpu: str) -> Seat:
    return _seat(problem, tenant, None, problem.profiles.alone.get(AloneKey(tenant, gpu, DEDICATED, None)))


def _shared_seat(problem: PackingProblem, tenant: str, group: list[str], gpu: str, placement: str) -> Seat:
    alone = problem.profiles.alone.get(AloneKey(tenant, gpu, DEDICATED, None))
    beside = [problem.profiles.beside.get(BesideKey(tenant, u, gpu, placement)) for u in group if u != tenant]
    if alone is None or None in beside:
        return _seat(problem, tenant, None, None)
    return _seat(problem, tenant, None, alone - sum(max(0.0, alone - b) for b in beside))


def smallest_slice(problem: PackingProblem, tenant: str, kind: GpuKind, placement: str) -> Seat:
    """The tenant's seat in the smallest of the GPU's slices that holds it (slice None: none does)."""
    for s in kind.smallest_first:
        seat = _seat(problem, tenant, s.name, problem.profiles.alone.get(AloneKey(tenant, kind.model, placement, s.name)))
        if seat.capacity is not None:
            return seat
    return Seat(tenant, None, problem.demand[tenant].target, None, None)


def admissible(problem: PackingProblem, kind: GpuKind, placement: str, tenants: frozenset[str]) -> bool:
    """Whether the group may be tried at all: known tenants, the placement allowed, the shared
    placements' size limit, one served model under "engine"."""
    if not tenants or not tenants <= problem.demand.keys():
        return False
    if placement == DEDICATED:
        return len(tenants) == 1
    if placement not in kind.placements or (placement in PARTITIONED_PLACEMENTS and not kind.slices):
        return False
    if placement in SHARED_PLACEMENTS and len(tenants) > kind.max_tenants:
        return False
    return placement != "engine" or len({problem.demand[t].model for t in tenants}) == 1


def worth_judging(problem: PackingProblem, kind: GpuKind, placement: str, tenants: frozenset[str]) -> bool:
    """Admissible and holding no refuted group of the same model and placement."""
    return admissible(problem, kind, placement, tenants) and not any(
        r.gpu == kind.model and r.placement == placement and r.tenants <= tenants for r in problem.refuted)


def seat_capacities(problem: PackingProblem, gpu: str, placement: str, tenants: Iterable[str]) -> tuple[Seat, ...] | None:
    """The group's seats, in demand order, if one GPU of model `gpu` holds it under `placement`
    (refuted and proven groups honoured), else None."""
    kind, names = problem.kind[gpu], frozenset(tenants)
    if not worth_judging(problem, kind, placement, names):
        return None
    group = sorted(names, key=problem.order.__getitem__)
    if placement in PARTITIONED_PLACEMENTS:
        seats = tuple(smallest_slice(problem, t, kind, placement) for t in group)
        used = [next(s for s in kind.slices if s.name == seat.slice) for seat in seats if seat.slice is not None]
        fits = (len(used) == len(seats) and sum(s.compute for s in used) <= SEVENTHS
                and sum(s.memory for s in used) <= EIGHTHS)
    elif len(group) == 1:
        seats = (_dedicated_seat(problem, group[0], gpu),)
        fits = seats[0].capacity is not None
    else:
        seats = tuple(_shared_seat(problem, t, group, gpu, placement) for t in group)
        fits = all(seat.capacity is not None for seat in seats)
    return seats if fits or GroupKey(gpu, placement, names) in problem.proven else None


def missing_profiles(problem: PackingProblem) -> tuple[list[AloneKey], list[BesideKey]]:
    """What to measure before `solve` can answer. Alone: every demand dedicated on every GPU model
    the fleet has, and in each slice of its partitioned placements up to the smallest known to
    hold. Beside: both directions of every pair that could share under a shared placement, once
    both are known to hold alone (each with a slack to give). Call again after measuring, until
    both lists are empty."""
    alone: list[AloneKey] = []
    beside: list[BesideKey] = []
    for kind in problem.usable:
        for d in problem.demands:
            key = AloneKey(d.name, kind.model, DEDICATED, None)
            alone += [key] if key not in problem.profiles.alone else []
            for placement in (p for p in kind.placements if p in PARTITIONED_PLACEMENTS):
                for s in kind.smallest_first:
                    key = AloneKey(d.name, kind.model, placement, s.name)
                    if key not in problem.profiles.alone:
                        alone.append(key)
                    elif _seat(problem, d.name, s.name, problem.profiles.alone[key]).capacity is not None:
                        break
        held = [d for d in problem.demands if _dedicated_seat(problem, d.name, kind.model).capacity is not None]
        for placement in (p for p in kind.placements if p in SHARED_PLACEMENTS and kind.max_tenants > 1):
            for t in held:
                for u in held:
                    pair = frozenset((t.name, u.name))
                    if t is u or not worth_judging(problem, kind, placement, pair):
                        continue
                    key = BesideKey(t.name, u.name, kind.model, placement)
                    beside += [key] if key not in problem.profiles.beside else []
    return alone, beside


def least_shares(problem: PackingProblem, tenant: str) -> list[tuple[float, float]]:
    """Per way the tenant can be placed, the least (compute, memory) share of a GPU it takes.
    Shared placement P on g: 1 / (d + 1), d the most neighbours it tolerates there (its smallest
    losses to the neighbours it holds a pair with, counted while they fit in its slack
    C_t - target / (1 - margin), at most max_tenants - 1); in a proven group of k: 1/k;
    partitioned: its smallest holding slice's sevenths and eighths; alone: 1."""
    shares: list[tuple[float, float]] = []
    target = problem.demand[tenant].target
    for kind in problem.usable:
        own = _dedicated_seat(problem, tenant, kind.model)
        if own.capacity is not None:
            shares.append((1.0, 1.0))
        for placement in kind.placements:
            if placement in PARTITIONED_PLACEMENTS:
                seat = smallest_slice(problem, tenant, kind, placement)
                size = next((s for s in kind.slices if s.name == seat.slice), None)
                shares += [(size.compute / SEVENTHS, size.memory / EIGHTHS)] if size else []
            elif own.capacity is not None and kind.max_tenants > 1:
                slack = own.capacity - target / problem.counted
                losses = sorted(max(0.0, own.capacity - beside) for u in problem.demands
                                if u.name != tenant and seat_capacities(problem, kind.model, placement, (tenant, u.name))
                                and (beside := problem.profiles.beside.get(BesideKey(tenant, u.name, kind.model, placement)))
                                is not None)
                spent, tolerated = 0.0, 0
                for loss in losses[: kind.max_tenants - 1]:
                    spent += loss
                    if spent > slack * (1 + 1e-9) + 1e-12:
                        break
                    tolerated += 1
                shares.append((1.0 / (tolerated + 1),) * 2)
        shares += [(1.0 / len(g.tenants),) * 2 for g in problem.proven
                   if g.gpu == kind.model and tenant in g.tenants and seat_capacities(problem, g.gpu, g.placement, g.tenants)]
    return shares


def lower_bound(problem: PackingProblem) -> int:
    """No packing under the model uses fewer GPUs. Give each tenant, for a weight w in [0, 1], the
    least of w x compute share + (1 - w) x memory share over the ways `least_shares` lists. On
    any GPU of a packing those sum to at most 1: a shared group of k tenants has each tolerating
    k - 1 neighbours, so each share is at most 1/k; a partitioned group's slices sum to at most
    7 sevenths and 8 eighths, hence any weighted mean of the two to at most 1; a tenant alone
    takes 1. So the sum over tenants, rounded up, is at most the GPUs of any packing, for each
    w; the best of w in (0, 1/2, 1) is returned. (The share max(compute, memory) would not do:
    3g.71gb (3/7, 4/8) beside 4g.71gb (4/7, 4/8) fits yet sums to 15/14.) A tenant that fits
    nowhere counts 1."""
    if not problem.demands:
        return 0
    options = [least_shares(problem, d.name) or [(1.0, 1.0)] for d in problem.demands]
    best = max(sum(min(w * c + (1 - w) * m for c, m in shares) for shares in options) for w in (0.0, 0.5, 1.0))
    return max(1, math.ceil(best - 1e-9))
