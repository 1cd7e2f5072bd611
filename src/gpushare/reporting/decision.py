"""The decision a report opens with: the answer to the question its runs were made for, in
sharing modes and tenants, never run names, computed from the same tables the report shows.

A plan: the GPUs it needs and its proofs. A capacity set: per neighbour setting, which mode
held the tenant's most load inside its SLO. An interference set: which mode kept each tenant
the most of what it is scored on. A plain matrix: per load, which mode gave the most output
throughput and what the others gave relative to it.
"""

from __future__ import annotations

import pandas as pd

from .capacity import Capacity, capacity_table
from .isolation import Interference
from .plan import Plans

MODE_NAMES = {"baseline": "one server", "timeslice": "time-slicing", "mps": "MPS",
              "mig_emulation": "MIG-like caps", "mig": "MIG"}


def mode_name(mode: str) -> str:
    return MODE_NAMES.get(mode, mode)


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
    stp = isolation.scores[isolation.scores["stp"].notna()]
    if not stp.empty:
        best = stp.loc[stp["stp"].idxmax()]
        lines.append(f"Together, the tenants did best under {mode_name(best['sharing_mode'])} "
                     f"(weighted speedup {best['stp']:.2f}; above 1 beats taking turns on the GPU).")
    return lines


def _change(share: float) -> str:
    return "±0%" if round(share, 2) == 0 else f"{share:+.0%}"


def reader_names(runs: pd.DataFrame) -> dict[str, str]:
    """What prose calls each scenario: its sharing mode, with its workload where two scenarios
    share a mode, and its name only where both are shared."""
    cases = runs[["scenario", "sharing_mode", "workload"]].drop_duplicates("scenario")
    by_mode = cases.groupby("sharing_mode")["scenario"].transform("count")
    by_both = cases.groupby(["sharing_mode", "workload"])["scenario"].transform("count")
    return {r.scenario: mode_name(r.sharing_mode) if m == 1 else f"{mode_name(r.sharing_mode)} on {r.workload}"
            if b == 1 else r.scenario for r, m, b in zip(cases.itertuples(), by_mode, by_both)}


def matrix_decision(summary: pd.DataFrame, names: dict[str, str]) -> list[str]:
    """Per load level, the scenario with the most output throughput and the others against it,
    named as `reader_names` does."""
    lines = []
    for load, part in summary[summary["output_throughput"].notna()].groupby("load"):
        ranked = part.sort_values("output_throughput", ascending=False)
        best = ranked.iloc[0]
        others = "; ".join(f"{names[r['scenario']]} {_change(r['output_throughput'] / best['output_throughput'] - 1)}"
                           for _, r in ranked.iloc[1:].iterrows() if best["output_throughput"] > 0)
        lines.append(f"At load {load:g}, {names[best['scenario']]} gave the most output throughput "
                     f"({best['output_throughput']:,.0f} tokens/s)" + (f"; {others}." if others else "."))
    return lines


def decision(summary: pd.DataFrame, runs: pd.DataFrame, capacity: Capacity, isolation: Interference,
             plans: Plans) -> list[str]:
    """The report's opening sentences: the plan's, the capacity's and the interference's answers
    where those were measured, else the matrix's."""
    found = plan_decision(plans) + capacity_decision(capacity) + interference_decision(isolation)
    return found or matrix_decision(summary, reader_names(runs))
