"""Like against like: the sharing modes compared where they ran the same thing.

A comparison holds the runs of a set that differ only in their sharing mode: the same GPU
model, workload, kind of load and load level and, for a tenant row, the same tenant in the
same phase, beside the same neighbours at the same loads. A closed loop is ranked on its
output throughput; a load sent at a rate on its P99 end-to-end latency, since its throughput
is the rate offered. Rows are named by their sharing mode, never by their run's name, unless
two scenarios of one mode ran the same thing. Both the report's decision (a plain matrix) and
its Observations are worded from these.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .style import base_scenario, mode_name, phase_of, reader_names

RATE = "req/s"
"""run_tables.LOAD_UNITS's unit of a load that sends requests at a rate, whatever the server does."""
KEYS = ["gpu_model", "workload", "load_mode", "load_unit", "load", "tenant", "phase", "neighbours"]
MEASURED = ("output_throughput", "p99_latency_s", "energy_per_output_token_j")


def mode_list(modes: pd.Series) -> str:
    """The sharing modes of a run set in words, in a fixed order."""
    return ", ".join(mode_name(m) for m in sorted(modes.dropna().unique()))


def capitalised(text: str) -> str:
    """A sentence's first word: "time-slicing" opens one as "Time-slicing", "MPS" as itself."""
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Named:
    """One row of a comparison: what prose calls it and its value of the ranked quantity."""

    name: str
    value: float


@dataclass(frozen=True)
class ModeComparison:
    """The rows of one like-for-like group, best first on `metric` (higher is better for
    throughput, lower for latency); the fastest and the most frugal row beside it."""

    where: str
    """The group in words: GPU model (where several), tenant and phase or workload, load."""
    metric: str
    ranked: list[Named]
    lowest_latency: Named | None
    least_energy: Named | None

    @property
    def rate_led(self) -> bool:
        """Ranked on latency: the load was sent at a rate, which its throughput only repeats."""
        return self.metric == "p99_latency_s"

    def headline(self) -> str:
        """The best mode and the others against it."""
        best, rest = self.ranked[0], self.ranked[1:]
        if self.rate_led:
            others = "; ".join(f"{r.name} {r.value / best.value:.2f}×" for r in rest if best.value > 0)
            return (f"{self.where}, {best.name} had the lowest P99 end-to-end latency ({best.value:.2f} s)"
                    + (f"; {others}." if others else "."))
        others = "; ".join(f"{r.name} {change(r.value / best.value - 1)}" for r in rest if best.value > 0)
        return (f"{self.where}, {best.name} gave the most output throughput ({best.value:,.0f} tokens/s)"
                + (f"; {others}." if others else "."))

    def sentence(self) -> str:
        """The headline, with the lowest latency (a closed loop) and the least energy per token."""
        line = self.headline()
        if not self.rate_led and self.lowest_latency is not None:
            line += f" The lowest P99 end-to-end latency was {self.lowest_latency.value:.2f} s ({self.lowest_latency.name})."
        if self.least_energy is not None:
            line += (f" The least GPU energy per output token was {self.least_energy.value:.3f} J "
                     f"({self.least_energy.name}).")
        return line


def change(share: float) -> str:
    """A relative change in words: whole percent, one decimal under 1 %, never "-0%"."""
    digits = 1 if abs(share) < 0.01 else 0
    return "±0%" if round(share, digits + 2) == 0 else f"{share:+.{digits}%}"


def load_text(load_unit: str, load: float) -> str:
    return f"{load:g} {RATE}" if load_unit == RATE else f"load {load:g}"


def _rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The complete runs with what each row ran beside what: its phase, its scenario less phase
    and tenant, and its neighbours' loads in the same run (a tenant row shared)."""
    rows = runs.copy()
    for column in ("workload", "load_mode", "load_unit", "sharing_mode", "gpu_model"):
        rows[column] = rows[column].fillna("").astype(str)
    rows["tenant"] = rows["tenant"].fillna("").astype(str)
    rows["phase"] = rows["scenario"].map(lambda s: phase_of(s) or "")
    rows["base"] = rows["scenario"].map(base_scenario)
    loads = {run: [(r.tenant, load_text(r.load_unit, r.load)) for r in part.itertuples()]
             for run, part in rows[rows["tenant"] != ""].groupby("run")}
    rows["neighbours"] = [", ".join(f"{t} at {text}" for t, text in loads.get(r.run, []) if t != r.tenant)
                          for r in rows.itertuples()]
    return rows


def _where(key: dict, several_gpus: bool, several_workloads: bool) -> str:
    load = load_text(key["load_unit"], key["load"])
    if key["tenant"]:
        beside = f"beside {key['neighbours']}" if key["neighbours"] else "alone"
        subject = f"for {key['tenant']} at {load} {beside}"
    elif several_workloads:
        subject = f"with {key['workload']}, at {load}"
    else:
        subject = f"at {load}"
    return capitalised(f"on the {key['gpu_model']}, {subject}" if several_gpus else subject)


def _least(part: pd.DataFrame, column: str, names: dict[str, str]) -> Named | None:
    values = part[column].dropna()
    if values.empty:
        return None
    row = part.loc[values.idxmin()]
    return Named(names[row["base"]], float(row[column]))


def mode_comparisons(runs: pd.DataFrame) -> list[ModeComparison]:
    """Every group of complete runs that ran the same thing under two sharing modes or more,
    each scenario's repeats averaged."""
    if runs.empty:
        return []
    rows = _rows(runs)
    several_gpus = rows["gpu_model"].nunique() > 1
    several_workloads = rows["workload"].nunique() > 1
    out = []
    for values, group in rows.groupby(KEYS, sort=True):
        part = group.groupby(["base", "sharing_mode"], as_index=False)[list(MEASURED)].mean()
        key = dict(zip(KEYS, values))
        metric = "p99_latency_s" if key["load_unit"] == RATE else "output_throughput"
        measured = part[part[metric].notna()].sort_values(metric, ascending=metric == "p99_latency_s")
        if measured["sharing_mode"].nunique() < 2:
            continue
        names = reader_names(part["base"], part["sharing_mode"])
        out.append(ModeComparison(
            where=_where(key, several_gpus, several_workloads), metric=metric,
            ranked=[Named(names[r.base], float(getattr(r, metric))) for r in measured.itertuples()],
            lowest_latency=_least(part, "p99_latency_s", names),
            least_energy=_least(part, "energy_per_output_token_j", names)))
    return out
