"""How well each sharing mode isolates tenants: `gpushare interfere`'s outputs as tables and figures.

`interfere` writes interference.json per --out folder: per scenario (one per sharing mode),
each tenant's metrics alone and shared, each tenant's score on the quantity it is scored on,
the scenario's scores, and the victim's latency per step of its aggressor's load and per loaded
level against solo. This module reads those files back into tidy frames, draws them and writes
a summary table, whose headline for a victim is its aggressor's worst loaded level;
`analysis.analyze` calls it when --runs holds such files. Each scenario keeps the colour the
other figures give its sharing mode (style.Look), so one mode reads the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from ..core.files import INTERFERENCE, REQUESTS
from ..experiment.interference_protocol import SHARED, solo_cell
from ..measure.interference_doc import STEP_METRICS, InterferenceUnreadable, ScenarioEntry, read_interference_doc
from ..measure.metric_catalog import METRICS
from ..measure.results import read_verdict
from .style import (ALONE, PAGE_IN, PHASE_LINE, Look, figure_legend, key, markdown, reader_names, save, styled,
                    subplots, wrapped)
from .style import SHARED as STYLE_SHARED

COMPARISON_FIELDS = ["scenario", "sharing_mode", "tenant", "metric", "solo", "shared", "slowdown"]
SCORE_FIELDS = ["scenario", "sharing_mode", "label", "tenants", "fairness", "stp", "fairness_vs_dedicated",
                "stp_vs_dedicated", "common_output_throughput", "common_interval_s", "token_times"]
TENANT_FIELDS = ["scenario", "sharing_mode", "tenant", "scored_on", "solo", "shared", "kept", "dedicated",
                 "kept_vs_dedicated", "reason"]
STEP_FIELDS = ["scenario", "sharing_mode", "tenant", "aggressor", "kind", "step", "level", *STEP_METRICS]
LEVEL_FIELDS = ["scenario", "sharing_mode", "tenant", "aggressor", "metric", "step", "level", "solo", "shared",
                "slowdown", "worst"]
PHASE_FIELDS = ["scenario", "phase", "folder"]
NUMERIC_FIELDS = {"solo", "shared", "slowdown", "tenants", "fairness", "stp", "fairness_vs_dedicated",
                  "stp_vs_dedicated", "common_output_throughput", "common_interval_s", "kept", "dedicated",
                  "kept_vs_dedicated", "step", "level", *STEP_METRICS}
TABLE_COLUMNS = {  # interference_table.csv's columns: (side, metric) of interference.csv, over the whole window
    "p99_ttft_solo_ms": ("solo", "p99_ttft_ms"), "p99_ttft_shared_ms": ("shared", "p99_ttft_ms"),
    "p99_ttft_slowdown": ("slowdown", "p99_ttft_ms"), "p99_tpot_slowdown": ("slowdown", "p99_tpot_ms"),
    "output_throughput_slowdown": ("slowdown", "output_throughput"),
    "slo_met_solo": ("solo", "good_request_fraction"), "slo_met_shared": ("shared", "good_request_fraction"),
}
HEADLINE = ("p99_ttft_ms", "p99_tpot_ms", "good_request_fraction")
"""The metrics whose headline is a victim's worst loaded level (else the whole window)."""
LEVEL_AXIS = {"concurrency": "concurrency (requests in flight)", "request_rate": "request rate (req/s)"}


def find_interference(paths: Iterable[Path]) -> list[Path]:
    """Every interference.json at or under the given folders."""
    return sorted({file for path in map(Path, paths) for file in path.rglob(INTERFERENCE) if file.is_file()})


@dataclass(frozen=True)
class Interference:
    """The complete scenarios of some interference.json files, as tidy frames.

    comparisons: one row per scenario, tenant and metric (interference.csv's rows); scores: one
    row per scenario; tenant_scores: one row per scenario and tenant (what it was scored on and
    kept; none for a file written before tenants were scored so); steps: one row per scenario,
    tenant and aggressor step; levels: one row per scenario, victim, metric and loaded level;
    phases: each phase's run folder. Incomplete or unreadable scenarios are in `left_out`, with why.
    """

    comparisons: pd.DataFrame
    scores: pd.DataFrame
    tenant_scores: pd.DataFrame
    steps: pd.DataFrame
    levels: pd.DataFrame
    phases: pd.DataFrame
    left_out: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.scores.empty

    def labels(self) -> dict[str, str]:
        return dict(zip(self.scores["scenario"], self.scores["label"]))

    def victims(self) -> list[str]:
        """Tenants whose steps follow another tenant's load; without such, every tenant."""
        named = self.steps.loc[self.steps["tenant"] != self.steps["aggressor"], "tenant"]
        return sorted(set(named) if not named.empty else set(self.comparisons["tenant"]))


def _load(files: list[Path]) -> tuple[list[tuple[Path, str, ScenarioEntry]], list[str]]:
    """(file, scenario, entry) for each scenario of each readable file, and the files left out."""
    entries: list[tuple[Path, str, ScenarioEntry]] = []
    left_out: list[str] = []
    for file in files:
        try:
            entries += [(file, name, entry) for name, entry in read_interference_doc(file).scenarios.items()]
        except InterferenceUnreadable as err:
            left_out.append(str(err))
    return entries, left_out


def read_interference(files: Iterable[Path]) -> Interference:
    """Tidy frames from interference.json files. A scenario name found in several files is
    prefixed with its file's folder, so that runs of one config under two --out stay apart.
    Phase folders are found beside the file (`interfere`'s layout), so a moved --out still reads."""
    entries, left_out = _load(sorted(map(Path, files)))
    counts = pd.Series([name for _, name, _ in entries], dtype=object).value_counts()
    comparisons: list[dict] = []
    scores: list[dict] = []
    tenant_scores: list[dict] = []
    steps: list[dict] = []
    levels: list[dict] = []
    phases: list[dict] = []
    for file, name, entry in entries:
        scenario = name if counts[name] == 1 else f"{file.parent.name}/{name}"
        if not entry.complete or entry.scores is None:
            left_out.append(f"{scenario} ({file}): {entry.error or 'not complete'}")
            continue
        mode = entry.sharing_mode
        where = {"scenario": scenario, "sharing_mode": mode}
        comparisons += [{**where, **row.model_dump()} for row in entry.tenants]
        common = entry.aggregate
        scores.append({**where,
                       **entry.scores.model_dump(include={"tenants", "fairness", "stp", "fairness_vs_dedicated",
                                                          "stp_vs_dedicated"}),
                       "common_output_throughput": None if common is None else common.output_throughput,
                       "common_interval_s": None if common is None else common.interval_s,
                       "token_times": None if common is None else common.token_times})
        tenant_scores += [{**where, "tenant": tenant, **score.model_dump()}
                          for tenant, score in entry.scores.scored.items()]
        steps += [{**where, "tenant": tenant, "aggressor": block.aggressor, "kind": block.kind, **step.model_dump()}
                  for tenant, block in entry.by_step.items() for step in block.steps]
        levels += [{**where, "tenant": tenant, "aggressor": entry.by_step[tenant].aggressor, **row.model_dump()}
                   for tenant, rows in entry.levels.items() for row in rows]
        phases += [{"scenario": scenario, "phase": phase, "folder": file.parent / name / phase}
                   for phase in entry.phases]

    def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
        out = pd.DataFrame(rows, columns=columns)
        numeric = [c for c in columns if c in NUMERIC_FIELDS]
        out[numeric] = out[numeric].apply(pd.to_numeric, errors="coerce")
        return out

    scored = frame(scores, SCORE_FIELDS).sort_values("scenario")
    scored["label"] = scored["scenario"].map(reader_names(scored["scenario"], scored["sharing_mode"]))
    return Interference(frame(comparisons, COMPARISON_FIELDS), scored,
                        frame(tenant_scores, TENANT_FIELDS), frame(steps, STEP_FIELDS), frame(levels, LEVEL_FIELDS),
                        frame(phases, PHASE_FIELDS), left_out)


# --- the table ----------------------------------------------------------------------------------


def isolation_table(data: Interference) -> pd.DataFrame:
    """One row per scenario and tenant: the numbers interference.csv holds, side by side; the
    headline (HEADLINE's metrics) of a victim at its aggressor's worst loaded level, of any
    other tenant over the whole window (`*_level` is then empty); the quantity it was scored on
    and the share it kept; and the scenario's scores."""
    wide = data.comparisons.set_index(["scenario", "sharing_mode", "tenant", "metric"])[
        ["solo", "shared", "slowdown"]].unstack("metric").reindex(columns=list(TABLE_COLUMNS.values()))
    out = wide.set_axis(list(TABLE_COLUMNS), axis=1).reset_index()
    whole = data.comparisons.set_index(["scenario", "tenant", "metric"])
    worst = data.levels[data.levels["worst"].astype(bool)].set_index(["scenario", "tenant", "metric"])
    keys = list(zip(out["scenario"], out["tenant"]))
    for metric in HEADLINE:
        short = metric.removesuffix("_ms")
        for side in ("shared", "slowdown", "level"):
            column = f"{short}_headline_{side}"
            out[column] = [worst.loc[(s, t, metric), side] if (s, t, metric) in worst.index else
                           (np.nan if side == "level" else whole[side].get((s, t, metric), np.nan)) for s, t in keys]
    scored = data.tenant_scores.set_index(["scenario", "tenant"])
    for column in ("scored_on", "kept", "kept_vs_dedicated", "reason"):
        out[column] = [scored[column].get(key, np.nan) for key in keys]
    return out.merge(data.scores[["scenario", "fairness", "stp", "stp_vs_dedicated", "common_output_throughput"]],
                     on="scenario")


def closest_to_alone(table: pd.DataFrame, victim: str) -> pd.DataFrame:
    """The victim's rows of `isolation_table` that measured its P99 TTFT alone and shared,
    the mode that kept it closest to its value alone first: what both the decision and the
    isolation observations name."""
    part = table[(table["tenant"] == victim) & table["p99_ttft_headline_slowdown"].notna()]
    return part.sort_values("p99_ttft_headline_slowdown", kind="stable")


def _shown(table: pd.DataFrame, aggressors: dict[tuple[str, str], str]) -> pd.DataFrame:
    """The table as a reader wants it: solo → shared with the ratio (a victim's at its
    aggressor's worst loaded level, "@ batch 32"), "–" where nothing was measured."""
    def num(v: float, fmt: str) -> str:
        return "–" if pd.isna(v) else format(v, fmt)

    def pct(v: float) -> str:
        return num(100 * v, ".0f") + ("%" if pd.notna(v) else "")

    def at(row: Any, short: str) -> str:
        level = getattr(row, f"{short}_headline_level")
        return "" if pd.isna(level) else f" @ {aggressors.get((row.scenario, row.tenant), '?')} {level:g}"

    def kept(row: Any) -> str:
        if pd.isna(row.reason):  # a file written before tenants were scored on their own quantity
            return "–"
        return "not scored" if pd.isna(row.scored_on) else f"×{num(row.kept, '.2f')} {row.scored_on}"

    ttft, tpot, slo = (METRICS[key] for key in HEADLINE)
    rows = list(table.itertuples())
    shown = {
        "Scenario": table["scenario"], "Mode": table["sharing_mode"], "Tenant": table["tenant"],
        f"{ttft.label} solo → shared ({ttft.unit})": [
            f"{num(r.p99_ttft_solo_ms, ',.1f')} → {num(r.p99_ttft_headline_shared, ',.1f')} "
            f"(×{num(r.p99_ttft_headline_slowdown, '.2f')}){at(r, 'p99_ttft')}" for r in rows],
        f"{tpot.label} shared/solo": [f"×{num(r.p99_tpot_headline_slowdown, '.2f')}{at(r, 'p99_tpot')}" for r in rows],
        f"{slo.label} solo → shared": [
            "–" if pd.isna(r.slo_met_solo) and pd.isna(r.good_request_fraction_headline_shared) else
            f"{pct(r.slo_met_solo)} → {pct(r.good_request_fraction_headline_shared)}{at(r, 'good_request_fraction')}"
            for r in rows],
        "Kept (scored on)": [kept(r) for r in rows],
    }
    if table["kept_vs_dedicated"].notna().any():
        shown["Kept vs dedicated"] = ["×" + num(v, ".2f") for v in table["kept_vs_dedicated"]]
    shown |= {"Fairness": table["fairness"].map(lambda v: num(v, ".2f")),
              "STP": table["stp"].map(lambda v: num(v, ".2f"))}
    if table["stp_vs_dedicated"].notna().any():
        shown["STP vs dedicated"] = table["stp_vs_dedicated"].map(lambda v: num(v, ".2f"))
    shown["tok/s, all loading"] = table["common_output_throughput"].map(lambda v: num(v, ",.0f"))
    return pd.DataFrame(shown)


def write_isolation_table(data: Interference, out: Path) -> list[Path]:
    """interference_table.csv (numbers), .md and .tex (formatted, the report inputs the .tex)."""
    table = isolation_table(data)
    levels = data.levels
    aggressors = {(s, t): a for s, t, a in zip(levels["scenario"], levels["tenant"], levels["aggressor"])}
    shown = _shown(table, aggressors)
    paths = [out / "interference_table.csv", out / "interference_table.md", out / "interference_table.tex"]
    table.to_csv(paths[0], index=False)
    paths[1].write_text(markdown(shown) + "".join(f"\nLeft out: {why}\n" for why in data.left_out))
    latex = shown.to_latex(index=False, escape=True, column_format="lll" + "r" * (len(shown.columns) - 3))
    paths[2].write_text(latex.replace("→", r"$\rightarrow$").replace("×", r"$\times$").replace("–", "--"))
    return paths


# --- figures ------------------------------------------------------------------------------------


def _scenario_ticks(ax: Axes, scenarios: list[str], names: dict[str, str], colour: Look, width: int = 13) -> None:
    """Horizontal tick labels, one per scenario, its sharing mode (reader_names) wrapped and in
    its colour."""
    ax.set_xticks(range(len(scenarios)), [wrapped(names[s], width) for s in scenarios])
    for tick, scenario in zip(ax.get_xticklabels(), scenarios):
        tick.set_color(colour[scenario])
    ax.set_xlabel("sharing mode")


@styled
def plot_noisy_neighbour(data: Interference, out: Path, colour: Look) -> list[Path]:
    """Each victim's P99 TTFT and TPOT per step of its aggressor's load, one line per mode;
    dotted: the victim's solo value, what no neighbour load gives it."""
    victims = data.steps[data.steps["tenant"] != data.steps["aggressor"]]
    groups = list(victims.groupby(["tenant", "aggressor", "kind"], sort=True))
    if not groups:
        return []
    solo = data.comparisons.set_index(["scenario", "tenant", "metric"])["solo"]
    fig, axes = subplots(len(groups), 2, figsize=(PAGE_IN, 2.5 * len(groups) + 0.7), squeeze=False)
    for row, ((victim, aggressor, kind), part) in zip(axes, groups):
        for ax, metric in zip(row, (METRICS["p99_ttft_ms"], METRICS["p99_tpot_ms"])):
            for scenario, lines in part.groupby("scenario"):
                mode, style = colour.mode(scenario), colour.scenario_style(scenario)
                ax.plot(lines["level"], lines[metric.key], marker="o", color=colour[scenario], linestyle=style,
                        gid=mode)
                ax.axhline(solo.get((scenario, victim, metric.key), np.nan), color=colour[scenario], linestyle=":",
                           linewidth=0.9, gid=mode)
            ax.set_title(f"{victim}: {metric.label} while {aggressor} steps up its load")
            ax.set_xlabel(f"{aggressor}'s {LEVEL_AXIS.get(kind, kind)}")
            ax.set_ylabel(f"{victim}'s {metric.title}")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
    handles, names = key(colour, data.scores["scenario"], phases=False)
    figure_legend(fig, [*handles, Line2D([], [], color="grey", linestyle=":")],
                  [*names, "dotted: the victim alone"], where="bottom")
    return save(fig, out, "noisy_neighbour")


@styled
def plot_slowdown_heatmap(data: Interference, out: Path, colour: Look) -> list[Path]:
    """Tenant × mode: P99 TTFT shared/solo (above 1 is worse) and the share each tenant kept of
    the quantity it is scored on (below 1 is worse; output tok/s for a file that scored none);
    green is good, red is bad in both, pale is little change. The colour scale is logarithmic and
    symmetric about 1 (×0.5 reads as strong as ×2), at least ×0.5 to ×2 so that noise does not
    look like harm. Scenario labels are horizontal, wrapped and coloured by sharing mode."""
    labels = data.labels()
    scenarios = list(data.scores["scenario"])
    ttft = data.comparisons[data.comparisons["metric"] == "p99_ttft_ms"]
    if data.tenant_scores.empty:
        kept = data.comparisons[data.comparisons["metric"] == "output_throughput"].assign(quantity="tok/s")
        kept_title = f"{METRICS['output_throughput'].label} shared / solo (<1: less)"
    else:
        kept = data.tenant_scores.rename(columns={"kept": "slowdown"}).assign(
            quantity=data.tenant_scores["scored_on"].fillna("not scored"))
        kept_title = "kept of what it is scored on,\nshared / solo (<1: less)"
    panels = ((ttft.assign(quantity=""), f"{METRICS['p99_ttft_ms'].label} shared / solo\n(>1: slower)", "RdYlGn_r"),
              (kept, kept_title, "RdYlGn"))
    size = (PAGE_IN, 1.7 + 0.4 * data.comparisons["tenant"].nunique())
    fig, axes = subplots(1, 2, figsize=size, squeeze=False)
    for ax, (rows, title, cmap) in zip(axes[0], panels):
        grid = rows.pivot(index="tenant", columns="scenario", values="slowdown").reindex(columns=scenarios)
        what = rows.pivot(index="tenant", columns="scenario", values="quantity").reindex(
            index=grid.index, columns=scenarios)
        values = grid.to_numpy(dtype=float)
        positive = values[np.isfinite(values) & (values > 0)]
        reach = max(2.0, *positive, *(1 / positive))
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=LogNorm(1 / reach, reach), aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            quantity = what.iat[i, j] if isinstance(what.iat[i, j], str) else ""
            text = ("n/a" if np.isnan(v) else f"×{v:.2f}") + (f"\n{quantity}" if quantity else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5)
        _scenario_ticks(ax, scenarios, labels, colour, width=max(8, int(36 / max(1, len(scenarios)))))
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set_ylabel("tenant")
        ax.set_title(title)
        bar = fig.colorbar(image, ax=ax, label="shared / solo (log scale)", shrink=0.9,
                           ticks=np.geomspace(1 / reach, reach, 5), format=FuncFormatter(lambda v, _: f"{v:.2g}"))
        bar.minorticks_off()
    return save(fig, out, "slowdown_heatmap")


@styled
def plot_slo_attainment(data: Interference, out: Path, colour: Look) -> list[Path]:
    """Per tenant with an SLO: the share of its requests that met it, alone (hatched) and shared
    (solid), per mode."""
    slo = data.comparisons[(data.comparisons["metric"] == "good_request_fraction")
                           & (data.comparisons["solo"].notna() | data.comparisons["shared"].notna())]
    tenants = sorted(slo["tenant"].unique())
    if not tenants:
        return []
    labels = data.labels()
    fig, axes = subplots(1, len(tenants), figsize=(PAGE_IN, 2.8), squeeze=False)
    sides = (("solo", -0.2, {"hatch": "//", "alpha": 0.45}), ("shared", 0.2, {}))
    for ax, tenant in zip(axes[0], tenants):
        part = slo[slo["tenant"] == tenant].sort_values("scenario")
        for x, row in enumerate(part.itertuples()):
            for side, offset, style in sides:
                value = 100 * getattr(row, side)
                ax.bar(x + offset, value, width=0.4, color=colour[row.scenario], edgecolor="black", linewidth=0.5,
                       gid=colour.mode(row.scenario), **style)
                ax.annotate("n/a" if np.isnan(value) else f"{value:.0f}%", (x + offset, np.nan_to_num(value)),
                            ha="center", va="bottom", fontsize=5.5, textcoords="offset points", xytext=(0, 1))
        _scenario_ticks(ax, list(part["scenario"]), labels, colour,
                        width=max(8, int(40 / max(1, len(part) * len(tenants)))))
        ax.set_ylim(0, 112)
        ax.set_ylabel("requests meeting the SLO (%)")
        ax.set_title(f"{tenant}: {METRICS['good_request_fraction'].label}, solo vs shared")
        ax.grid(alpha=0.3, axis="y")
    figure_legend(fig, [Patch(facecolor="white", edgecolor="black", hatch="//"),
                        Patch(facecolor="grey", edgecolor="black")],
                  ["solo (tenant alone)", "shared (all tenants)"], where="bottom")
    return save(fig, out, "slo_attainment")


def phase_requests(folder: Path, tenant: str) -> pd.DataFrame:
    """A tenant's measured, completed requests in a complete phase; none if the phase is not."""
    if not read_verdict(folder).complete:
        return pd.DataFrame(columns=["ttft_s"])
    requests = pd.read_csv(folder / REQUESTS)
    return requests[(requests["tenant"] == tenant) & (requests["in_window"] == 1) & (requests["status"] == "ok")]


@styled
def plot_latency_cdfs(data: Interference, out: Path, colour: Look) -> list[Path]:
    """Per tenant, the TTFT distribution alone (dashed) and shared (solid), per mode: the whole
    distribution, where the table gives only its P99."""
    tenants = sorted(data.comparisons["tenant"].unique())
    if not tenants:
        return []
    folders = data.phases.set_index(["scenario", "phase"])["folder"]
    fig, axes = subplots(1, len(tenants), figsize=(PAGE_IN, 2.8), squeeze=False, sharey=True)
    for ax, tenant in zip(axes[0], tenants):
        for scenario in data.scores["scenario"]:
            for phase, style in ((solo_cell(tenant), PHASE_LINE[ALONE]), (SHARED, PHASE_LINE[STYLE_SHARED])):
                ttft = phase_requests(folders[(scenario, phase)], tenant)["ttft_s"].dropna()
                values = np.sort(ttft.to_numpy(dtype=float)) * 1000
                if values.size:
                    ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", linestyle=style,
                            color=colour[scenario], gid=colour.mode(scenario))
        ax.set_title(f"{tenant}: TTFT solo vs shared")
        ax.set_xlabel("time to first token (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of requests")
    handles, names = key(colour, data.scores["scenario"], phases=False)
    handles += [Line2D([], [], color="dimgrey", linestyle=PHASE_LINE[p]) for p in (ALONE, STYLE_SHARED)]
    names += ["dashed: tenant alone", "solid: shared"]
    figure_legend(fig, handles, names, where="bottom")
    return save(fig, out, "latency_cdf_solo_vs_shared")


def write_isolation(data: Interference, out: Path, colour: Look) -> list[Path]:
    """The table and every figure; nothing where no scenario is complete."""
    if data.empty:
        return []
    return [*write_isolation_table(data, out), *plot_noisy_neighbour(data, out, colour),
            *plot_slowdown_heatmap(data, out, colour), *plot_slo_attainment(data, out, colour),
            *plot_latency_cdfs(data, out, colour)]
