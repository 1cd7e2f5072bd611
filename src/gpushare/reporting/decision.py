"""The decision a report opens with: the answer to the question its runs were made for, in
sharing modes and tenants, never run names, computed from the same tables the report shows.

A plan: the GPUs it needs and its proofs. A capacity set: per neighbour setting, which mode
held the tenant's most load inside its SLO. An interference set: which mode kept each tenant
the most of what it is scored on, and each victim's P99 TTFT closest to its value alone. A
plain matrix: where the modes ran the same thing (compare.py), which one did best and what
the others gave relative to it.
"""

from __future__ import annotations

import pandas as pd

from .capacity import Capacity, capacity_table
from .compare import mode_comparisons
from .isolation import Interference, closest_to_alone, isolation_table
from .plan import Plans
from .style import mode_name


def plan_decision(plans: Plans) -> list[str]:
    lines = []
    for _, doc in plans.docs:
        if doc.gpus_used is None:
            continue
        tenants = sum(len(g.seats) for g in doc.gpus)
        proven = sum(g.proven for g in doc.gpus)
        verdict = ("every GPU proven by a measured run of its tenants together at their targets"
                   if proven == len(doc.gpus) else f"{proven} of {len(doc.gpus)} GPUs proven")
        lines.append(f"Plan {doc.plan}: {tenants} tenants need {doc.gpus_used} GPU(s) against {doc.dedicated} "
                     f"dedicated (lower bound {doc.lower_bound}), {verdict}.")
    return lines


def capacity_decision(capacity: Capacity) -> list[str]:
    """Per tenant, target and neighbour setting measured under two modes or more: the mode that
    held the most load, and what the others held."""
    if capacity.empty:
        return []
    table = capacity_table(capacity)
    beside = table[(table["beside"] != "") & table["capacity"].notna()]
    lines = []
    for (tenant, target, setting), part in beside.groupby(["tenant", "target", "beside"], sort=False):
        if part["sharing_mode"].nunique() < 2:
            continue
        ranked = part.sort_values("capacity", ascending=False)
        best, rest = ranked.iloc[0], ranked.iloc[1:]
        others = ", ".join(f"{mode_name(r.sharing_mode)} {r.capacity:g}" for r in rest.itertuples())
        lines.append(f"Beside {setting}, {tenant} held the most load inside its SLO (attainment {target:g}) under "
                     f"{mode_name(best['sharing_mode'])}: {best['capacity']:g} {best['unit']}"
                     f"{'' if best['resolved'] else ' or more'}; {others}.")
    return lines


def interference_decision(isolation: Interference) -> list[str]:
    if isolation.empty:
        return []
    scores = isolation.tenant_scores[isolation.tenant_scores["kept"].notna()]
    lines = []
    for tenant, part in scores.groupby("tenant", sort=False):
        best = part.loc[part["kept"].idxmax()]
        lines.append(f"{tenant} kept the most of its {best['scored_on']} beside its neighbours under "
                     f"{mode_name(best['sharing_mode'])} (x{best['kept']:.2f} of alone).")
    table = isolation_table(isolation)
    for victim in isolation.victims():
        ranked = closest_to_alone(table, victim)
        if ranked["sharing_mode"].nunique() < 2:
            continue
        best, worst = ranked.iloc[0], ranked.iloc[-1]
        lines.append(f"{victim}'s P99 TTFT beside its neighbours stayed closest to its value alone under "
                     f"{mode_name(best['sharing_mode'])} (x{best['p99_ttft_headline_slowdown']:.2f}), and strayed "
                     f"furthest under {mode_name(worst['sharing_mode'])} (x{worst['p99_ttft_headline_slowdown']:.2f}).")
    stp = isolation.scores[isolation.scores["stp"].notna()]
    if not stp.empty:
        best = stp.loc[stp["stp"].idxmax()]
        lines.append(f"Together, the tenants did best under {mode_name(best['sharing_mode'])} "
                     f"(weighted speedup {best['stp']:.2f}; above 1 beats taking turns on the GPU).")
    return lines


def matrix_decision(runs: pd.DataFrame) -> list[str]:
    """Where the sharing modes ran the same thing: the best one and the others against it."""
    return [c.headline() for c in mode_comparisons(runs)]


def decision(runs: pd.DataFrame, capacity: Capacity, isolation: Interference, plans: Plans) -> list[str]:
    """The report's opening sentences: the plan's, the capacity's and the interference's answers
    where those were measured, else the matrix's."""
    found = plan_decision(plans) + capacity_decision(capacity) + interference_decision(isolation)
    return found or matrix_decision(runs)
