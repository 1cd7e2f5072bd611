"""A lower bound on the GPUs of any packing under measure.packing's model, far tighter than
`lower_bound`'s least shares when tenants share GPUs.

Farley's bound: give each tenant a weight y_t >= 0. If no group one GPU holds weighs more than
W, each GPU of any packing carries at most W, so any packing uses at least sum(y) / W GPUs.

W is bounded per GPU model and placement by a relaxation that every group the model holds
passes. Shared placements: pick any member a of the group; its neighbours fit in a's slack
C_a - target_a / (1 - margin) by what each takes from a, are at most max_tenants - 1, and can
each share a GPU with a as a pair (under "engine", one served model); so the group weighs at
most y_a plus a fractional knapsack, bounded by any dual certificate. Partitioned placements:
the sevenths and eighths of each tenant's smallest holding slice, weighed exactly. Refuted
groups are ignored (they only remove groups); proven groups are weighed one by one. The
weights come from an LP in HiGHS that maximises sum(y) with every such certificate at most 1;
W is then recomputed from them, so the LP's tolerances never make the bound invalid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_array

from gpushare.measure.packing import (DEDICATED, EIGHTHS, PARTITIONED_PLACEMENTS, SEVENTHS, AloneKey, BesideKey,
                                      GpuKind, PackingProblem, seat_capacities, smallest_slice)

LENIENT = 1e-6
"""Slack added to every relaxed test, in units of the tenant's capacity alone (or of a slice's
sevenths and eighths), so that rounding in HiGHS never cuts off a group the model holds."""


@dataclass(frozen=True)
class Pricing:
    """One relaxed heaviest-group problem: a GPU model and placement, its candidate tenants
    (indices into problem.demands) and the data that judge a group of them. Shared: loss[a, b]
    is what b takes from a, over a's capacity alone (inf: unknown), slack[a] what a can give.
    Partitioned: size[a] is the sevenths and eighths of a's smallest holding slice."""
    gpu: str
    placement: str
    members: np.ndarray
    largest: int
    loss: np.ndarray | None = None
    slack: np.ndarray | None = None
    size: np.ndarray | None = None


def _shared(problem: PackingProblem, kind: GpuKind, placement: str, members: list[int]) -> Pricing:
    own = np.array([problem.profiles.alone[AloneKey(problem.demands[i].name, kind.model, DEDICATED, None)]
                    for i in members])
    slack = 1.0 - np.array([problem.demands[i].target for i in members]) / (problem.counted * own)
    loss = np.full((len(members), len(members)), np.inf)
    for a, i in enumerate(members):
        for b, j in enumerate(members):
            beside = problem.profiles.beside.get(BesideKey(problem.demands[i].name, problem.demands[j].name,
                                                           kind.model, placement))
            if a == b:
                loss[a, b] = 0.0
            elif beside is not None:
                loss[a, b] = max(0.0, own[a] - beside) / own[a]
    return Pricing(kind.model, placement, np.array(members), kind.max_tenants, loss=loss, slack=slack + LENIENT)


def _partitioned(problem: PackingProblem, kind: GpuKind, placement: str) -> Pricing | None:
    size = {s.name: s for s in kind.slices}
    seats = [(i, smallest_slice(problem, d.name, kind, placement)) for i, d in enumerate(problem.demands)]
    held = [(i, size[s.slice]) for i, s in seats if s.slice is not None]
    if not held:
        return None
    return Pricing(kind.model, placement, np.array([i for i, _ in held]), SEVENTHS,
                   size=np.array([[s.compute, s.memory] for _, s in held], dtype=float))


def pricings(problem: PackingProblem) -> list[Pricing]:
    """Every relaxed problem: per GPU model the fleet has, each allowed placement (under "engine"
    one per served model), over the tenants that hold there alone."""
    found: list[Pricing] = []
    for kind in problem.usable:
        held = [i for i, d in enumerate(problem.demands)
                if seat_capacities(problem, kind.model, DEDICATED, [d.name]) is not None]
        for placement in kind.placements:
            if placement in PARTITIONED_PLACEMENTS:
                if kind.slices and (p := _partitioned(problem, kind, placement)):
                    found.append(p)
            elif kind.max_tenants > 1:
                served = sorted({problem.demands[i].model for i in held}) if placement == "engine" else [None]
                for model in served:
                    members = [i for i in held if model is None or problem.demands[i].model == model]
                    if len(members) > 1:
                        found.append(_shared(problem, kind, placement, members))
    return found


def _fractional_knapsacks(weight: np.ndarray, size: np.ndarray, room: np.ndarray, most: int) -> np.ndarray:
    """Per row r, an upper bound on max sum weight[r] x s.t. sum size[r] x <= room[r], sum x <=
    most, 0 <= x <= 1: by weak duality room lam + most mu + sum max(0, weight - lam size - mu)
    for any lam, mu >= 0; lam is tried at every ratio weight / size, and for each the best mu
    (the most-th largest of weight - lam size, or 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(size > 0, weight / size, 0.0)
    lams = np.concatenate([np.zeros((len(weight), 1)), ratios], axis=1)[:, :, None]  # rows x lams x 1
    value = weight[:, None, :] - lams * size[:, None, :]  # rows x lams x items
    if most < value.shape[2]:
        mu = np.maximum(0.0, -np.partition(-value, most - 1, axis=2)[:, :, most - 1:most])
    else:
        mu = np.zeros(value.shape[:2] + (1,))
    bound = room[:, None] * lams[:, :, 0] + most * mu[:, :, 0] + np.maximum(0.0, value - mu).sum(axis=2)
    return bound.min(axis=1)


def heaviest_bound(pricing: Pricing, weight: np.ndarray) -> float:
    """An upper bound on the weight of any group the model holds under this pricing. Shared: any
    member a of such a group carries its neighbours within its slack, so the group weighs at
    most weight_a plus a fractional knapsack of the members that a can share a GPU with, sized
    by what they take from a. Partitioned: exactly, by dynamic programming over the sevenths
    and eighths left."""
    w = np.maximum(0.0, weight[pricing.members])
    if pricing.size is not None:
        best = np.zeros((SEVENTHS + 1, EIGHTHS + 1))  # best[c, m]: heaviest using at most c and m
        for (c, m), wt in zip(pricing.size.astype(int), w):
            if wt > 0:
                best[c:, m:] = np.maximum(best[c:, m:], best[: SEVENTHS + 1 - c, : EIGHTHS + 1 - m] + wt)
        return float(best[-1, -1])
    share = (pricing.loss <= pricing.slack[:, None]) & (pricing.loss.T <= pricing.slack[None, :])
    np.fill_diagonal(share, False)
    size = np.where(share, pricing.loss, 0.0)
    items = np.where(share, w[None, :], 0.0)
    return float((w + _fractional_knapsacks(items, size, pricing.slack, pricing.largest - 1)).max())


def relaxed_weights(problem: PackingProblem, found: list[Pricing]) -> np.ndarray:
    """The weights of most total that every relaxed group of `heaviest_bound` allows: an LP in
    HiGHS with each fractional knapsack's dual written out (lam, mu and one pi per item), so a
    relaxed group weighs at most 1 exactly when its dual certificate costs at most 1."""
    n = len(problem.demands)
    rows, cols, vals, upper = [], [], [], []
    count = [n]  # variables: y first, then each certificate's lam, (beta), mu, pi

    def new(k: int) -> np.ndarray:
        start = count[0]
        count[0] += k
        return np.arange(start, start + k)

    def row(indices, coefficients, bound: float) -> None:
        r = len(upper)
        rows.extend([r] * len(indices))
        cols.extend(indices)
        vals.extend(coefficients)
        upper.append(bound)

    for p in found:
        if p.size is not None:
            lam, beta, mu, pi = new(1)[0], new(1)[0], new(1)[0], new(len(p.members))
            row([lam, beta, mu, *pi], [SEVENTHS, EIGHTHS, p.largest, *np.ones(len(pi))], 1.0)
            for k, t in enumerate(p.members):
                row([t, lam, beta, mu, pi[k]], [1.0, -p.size[k, 0], -p.size[k, 1], -1.0, -1.0], 0.0)
            continue
        share = (p.loss <= p.slack[:, None]) & (p.loss.T <= p.slack[None, :])
        np.fill_diagonal(share, False)
        for a, t in enumerate(p.members):
            mates = np.flatnonzero(share[a])
            lam, mu, pi = new(1)[0], new(1)[0], new(len(mates))
            row([t, lam, mu, *pi], [1.0, p.slack[a], p.largest - 1, *np.ones(len(pi))], 1.0)
            for b, v in zip(mates, pi):
                row([p.members[b], lam, mu, v], [1.0, -p.loss[a, b], -1.0, -1.0], 0.0)
    for g in problem.proven:
        members = [problem.order[t] for t in g.tenants if t in problem.order]
        row(members, [1.0] * len(members), 1.0)
    matrix = coo_array((vals, (rows, cols)), shape=(len(upper), count[0])).tocsr()
    cost = np.zeros(count[0])
    cost[:n] = -1.0
    bounds = [(0, 1)] * n + [(0, None)] * (count[0] - n)
    result = linprog(cost, A_ub=matrix, b_ub=np.array(upper), bounds=bounds, method="highs")
    return np.maximum(0.0, result.x[:n]) if result.x is not None else np.zeros(n)


def relaxed_bound(problem: PackingProblem) -> int:
    """Farley's bound for the weights of `relaxed_weights`, its heaviest group recomputed from
    them (and every proven group weighed), so that the LP's own tolerances cannot make it
    invalid: no packing under the model uses fewer GPUs."""
    if not problem.demands:
        return 0
    found = pricings(problem)
    weight = relaxed_weights(problem, found)
    heaviest = max([heaviest_bound(p, weight) for p in found]
                   + [sum(weight[problem.order[t]] for t in g.tenants if t in problem.order) for g in problem.proven],
                   default=0.0)
    most = max(1.0, float(weight.max()), heaviest) * (1 + 1e-9)
    return math.ceil(weight.sum() / most - 1e-9)
