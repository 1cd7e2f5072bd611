"""SLO capacity alone and beside neighbours: `gpushare capacity`'s outputs as a table, a figure
and the report's sentences.

`capacity` writes capacity.json per --out folder: per scenario (one per sharing mode), the
searched tenant's capacity, the highest level of its own load (request rate on an open loop,
concurrency on a closed one) proven to meet its SLO's attainment target, alone and beside each
neighbour setting, with first_infeasible, the lowest level above it proven not to: the search's
bracket, where the capacity lies. This module reads those files back into one tidy frame and
writes capacity_table.* and the capacity figure; `analysis.analyze` calls it when --runs holds
such files, and the report's Isolation section leads with them. Lines are coloured by sharing
mode (style.sharing_mode_colour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..core.files import CONFIG
from ..experiment.capacity import knob_of
from ..measure.capacity_doc import CAPACITY_JSON, CapacityDoc, CapacityUnreadable, read_capacity_doc
from ..measure.results import read_run_config
from .isolation import LEVEL_AXIS
from .found import read_found
from .style import PAGE_IN, markdown, reader_names, save, sharing_mode_colour, spread_labels, styled, subplots

UNITS = {"request_rate": "req/s", "concurrency": "requests in flight"}
"""The searched tenant's knob, as its capacity's unit."""
ALONE = "alone"
ROW_FIELDS = ["scenario", "sharing_mode", "tenant", "knob", "beside", "neighbours", "level", "neighbour_knob",
              "target", "capacity", "first_infeasible", "attainment_at_capacity", "wilson_low_at_capacity",
              "wilson_high_at_capacity", "attainment_at_first_infeasible", "wilson_low_at_first_infeasible",
              "wilson_high_at_first_infeasible", "binding", "probes", "resolved", "why", "capacity_kept", "file"]
TABLE_FIELDS = ["scenario", "sharing_mode", "tenant", "knob", "unit", "target", "beside", "capacity",
                "first_infeasible", "capacity_alone", "kept", "resolved", "binding", "probes", "why"]
FIGURE = "capacity"
TABLE = "capacity_table"


def find_capacity(paths: Iterable[Path]) -> list[Path]:
    """Every capacity.json at or under the given folders."""
    return sorted({file for path in map(Path, paths) for file in path.rglob(CAPACITY_JSON) if file.is_file()})


def parse_beside(beside: str) -> tuple[tuple[str, float], ...]:
    """capacity.csv's `beside` ("batch=16", "a=1,b=2"; "" alone) as (neighbour, level) pairs."""
    pairs = []
    for part in filter(None, beside.split(",")):
        name, _, level = part.partition("=")
        pairs.append((name, float(level)))
    return tuple(pairs)


def setting_key(beside: str) -> tuple:
    """Alone first, then by neighbour and level (4 before 16), as the table and the figure order them."""
    return bool(beside), parse_beside(beside)


@dataclass(frozen=True)
class Capacity:
    """The rows of some capacity.json files, one per scenario, neighbour setting and target
    (capacity.csv's, with the neighbours' names, their level where one neighbour loads, and
    that neighbour's knob where a probe's config.yaml still reads). Files that do not read are
    in `left_out`, with why."""

    rows: pd.DataFrame
    left_out: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.rows.empty


def neighbour_knobs(file: Path, doc: CapacityDoc) -> dict[str, dict[str, str]]:
    """Per scenario, each tenant's knob (request_rate or concurrency), from the config.yaml of
    one of its probes; a scenario none of whose probes reads has none. A probe folder is looked
    for beside the file first (capacity's layout, so a moved --out still reads), then where the
    doc recorded it."""
    found: dict[str, dict[str, str]] = {}
    for probe in doc.probes:
        if probe.scenario in found:
            continue
        for folder in (file.parent / probe.scenario / Path(probe.run_dir).name, Path(probe.run_dir)):
            config = read_run_config(folder) if (folder / CONFIG).is_file() else None
            if config is not None:
                found[probe.scenario] = {t.name: knob_of(t, config) for t in config.tenants}
                break
    return found


def read_capacity(files: Iterable[Path]) -> Capacity:
    """One tidy frame from capacity.json files. A scenario name found in several files is
    prefixed with its file's folder, so that runs of one config under two --out stay apart."""
    docs, left_out = read_found(files, read_capacity_doc, CapacityUnreadable, "capacity.json")
    counts = pd.Series([name for _, doc in docs for name in {row.scenario for row in doc.rows}],
                       dtype=object).value_counts()
    rows: list[dict] = []
    for file, doc in docs:
        knobs = neighbour_knobs(file, doc)
        for row in doc.rows:
            pairs = parse_beside(row.beside)
            names = [name for name, _ in pairs]
            neighbour_knob = {knobs.get(row.scenario, {}).get(name) for name in names}
            rows.append({**row.model_dump(exclude={"non_monotone", "capacity_run_dir", "first_infeasible_run_dir"}),
                         "scenario": row.scenario if counts[row.scenario] == 1 else f"{file.parent.name}/{row.scenario}",
                         "neighbours": "+".join(names), "level": pairs[0][1] if len(pairs) == 1 else math.nan,
                         "neighbour_knob": neighbour_knob.pop() if len(neighbour_knob) == 1 else None,
                         "file": str(file)})
    frame = pd.DataFrame(rows, columns=ROW_FIELDS)
    if not frame.empty:
        order = sorted(range(len(frame)), key=lambda i: (frame["scenario"].iat[i], frame["target"].iat[i],
                                                          setting_key(frame["beside"].iat[i])))
        frame = frame.iloc[order].reset_index(drop=True)
    return Capacity(frame, left_out)


# --- the table ----------------------------------------------------------------------------------


def capacity_table(data: Capacity) -> pd.DataFrame:
    """One row per scenario, target and neighbour setting (alone first; `beside` empty): the
    capacity, the bracket's top (first_infeasible), the capacity alone for the same scenario and
    target, and kept = capacity beside / capacity alone (empty alone, and where either is
    unknown or the capacity alone is 0)."""
    rows = data.rows
    alone = rows[rows["beside"] == ""].set_index(["scenario", "target"])["capacity"]
    out = rows.assign(unit=rows["knob"].map(UNITS))
    out["capacity_alone"] = [alone.get((s, t), np.nan) for s, t in zip(out["scenario"], out["target"])]
    out["capacity_alone"] = pd.to_numeric(out["capacity_alone"], errors="coerce")
    beside = out["beside"] != ""
    usable = beside & (out["capacity_alone"] > 0) & out["capacity"].notna()
    out["kept"] = (out["capacity"] / out["capacity_alone"]).where(usable)
    return out[TABLE_FIELDS].reset_index(drop=True)


def number(value: float) -> str:
    """A level for reading: up to four significant digits, thousands separated."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def amount(capacity: float, first_infeasible: float) -> tuple[str, str]:
    """A capacity for the table and for the text: the level; below the lowest level probed
    where that was proven infeasible (0 where it was not proven either way); at least the level
    where no level was found infeasible; a dash (the text: "no level") where no probe completed."""
    if pd.isna(capacity):
        return "–", "no level (no probe completed)"
    if capacity == 0:
        return ("0", "0") if pd.isna(first_infeasible) else (f"<{number(first_infeasible)}",
                                                           f"less than {number(first_infeasible)}")
    if pd.isna(first_infeasible):
        return f"≥{number(capacity)}", f"at least {number(capacity)}"
    return number(capacity), number(capacity)


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and target: the capacity alone, and beside each neighbour setting with the
    share it kept; * marks an unresolved search; the unit in the headers where every scenario
    searched the same knob, in the cells otherwise."""
    units = table["unit"].unique()
    one_unit = f" ({units[0]})" if len(units) == 1 else ""
    settings = sorted(set(table["beside"]) - {""}, key=setting_key)
    shown = []
    for (scenario, target), part in table.groupby(["scenario", "target"], sort=False):
        cells = {r.beside: r for r in part.itertuples()}

        def cell(beside: str) -> str:
            r = cells.get(beside)
            if r is None:
                return ""
            text = amount(r.capacity, r.first_infeasible)[0] + ("" if r.resolved else "*")
            text += "" if one_unit or text.startswith("–") else f" {r.unit}"
            return text + (f" (×{r.kept:.2f})" if pd.notna(r.kept) else "")

        row = {"Scenario": scenario, "Mode": part["sharing_mode"].iloc[0], "Tenant": part["tenant"].iloc[0],
               "Target": f"{target:g}", f"Alone{one_unit}": cell("")}
        row |= {f"Beside {beside}{one_unit}": cell(beside) for beside in settings}
        shown.append(row)
    return pd.DataFrame(shown)


def write_capacity_table(data: Capacity, out: Path) -> list[Path]:
    """capacity_table.csv (numbers, one row per scenario, target and setting), .md and .tex
    (per scenario and target, formatted; the report inputs the .tex)."""
    table = capacity_table(data)
    shown = _shown(table)
    paths = [out / f"{TABLE}.csv", out / f"{TABLE}.md", out / f"{TABLE}.tex"]
    table.to_csv(paths[0], index=False)
    unresolved = table[~table["resolved"].astype(bool)]
    notes = [f"\n* unresolved: {r.scenario} {r.beside or ALONE}, target {r.target:g}: {r.why}\n"
             for r in unresolved.itertuples()]
    paths[1].write_text(markdown(shown) + "".join(notes) + "".join(f"\nLeft out: {why}\n" for why in data.left_out))
    latex = shown.to_latex(index=False, escape=True, column_format="llll" + "r" * (len(shown.columns) - 4))
    paths[2].write_text(latex.replace("×", r"$\times$").replace("–", "--").replace("≥", r"$\geq$")
                        .replace("<", r"$<$"))
    return paths


# --- the figure ---------------------------------------------------------------------------------

LINE_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "D", "^"]


@styled
def plot_capacity(data: Capacity, out: Path) -> list[Path]:
    """The searched tenant's capacity (y) against its neighbour's level (x; alone the leftmost
    tick), one line per scenario coloured by its sharing mode and named by it (reader_names); a
    bar at each point reaches from the capacity (the highest level proven feasible) up to
    first_infeasible (the lowest level proven not), the search's bracket at that level only:
    nothing is drawn between levels but the line, and the scenarios' bars stand side by side.
    Hollow: unresolved; an arrow: no infeasible level was found (the capacity is at least
    that). One panel per attainment target (rows) and per neighbour (columns) where there are
    several; nothing where no row has a capacity."""
    rows = data.rows
    if rows["capacity"].notna().sum() == 0:
        return []
    targets = sorted(rows["target"].unique())
    groups = sorted({(t, n) for t, n in zip(rows["tenant"], rows["neighbours"]) if n})
    if not groups:  # alone only: one tick per tenant
        groups = sorted({(t, "") for t in rows["tenant"]})
    scenarios = list(dict.fromkeys(rows["scenario"]))
    modes = dict(zip(rows["scenario"], rows["sharing_mode"]))
    shown_as = reader_names(rows["scenario"], rows["sharing_mode"])
    bar_width = min(0.12, 0.5 / len(scenarios))
    per_mode = {mode: [s for s in scenarios if modes[s] == mode] for mode in modes.values()}
    fig, axes = subplots(len(targets), len(groups), figsize=(max(PAGE_IN, 4.6 * len(groups)), 2.9 * len(targets) + 0.9),
                         squeeze=False)
    any_unresolved = any_open = any_bar = False
    for ax_row, target in zip(axes, targets):
        for ax, (tenant, neighbours) in zip(ax_row, groups):
            part = rows[(rows["target"] == target) & (rows["tenant"] == tenant)
                        & rows["neighbours"].isin(["", neighbours])]
            settings = sorted(set(part["beside"]), key=setting_key)
            if "" not in settings:
                settings.insert(0, "")
            x_of = {beside: x for x, beside in enumerate(settings)}
            ends: list[tuple[float, float, str, tuple]] = []
            top = 0.0
            for k, scenario in enumerate(scenarios):
                line = part[(part["scenario"] == scenario) & part["capacity"].notna()]
                if line.empty:
                    continue
                mode = modes[scenario]
                style = per_mode[mode].index(scenario)
                colour = sharing_mode_colour(mode)
                beside_one_another = (k - (len(scenarios) - 1) / 2) * bar_width
                xs = line["beside"].map(x_of).to_numpy(dtype=float) + beside_one_another
                caps = line["capacity"].to_numpy(dtype=float)
                tops = line["first_infeasible"].to_numpy(dtype=float)
                resolved = line["resolved"].astype(bool).to_numpy()
                ax.bar(xs, np.nan_to_num(tops - caps), bottom=caps, width=bar_width * 0.9, color=colour, alpha=0.3,
                       linewidth=0, gid=mode)
                ax.plot(xs, caps, color=colour, linestyle=LINE_STYLES[style % 4], linewidth=1.8, gid=mode)
                marker = MARKERS[style % 4]
                ax.plot(xs[resolved], caps[resolved], linestyle="none", marker=marker, markersize=6.5, color=colour,
                        gid=mode)
                ax.plot(xs[~resolved], caps[~resolved], linestyle="none", marker=marker, markersize=6.5,
                        markerfacecolor="white", markeredgewidth=1.6, color=colour, gid=mode)
                any_unresolved |= bool((~resolved).any())
                any_bar |= bool((~np.isnan(tops)).any())
                for x, cap in zip(xs[np.isnan(tops)], caps[np.isnan(tops)]):
                    ax.annotate("", xy=(x, cap), xytext=(0, 16), textcoords="offset points",
                                arrowprops={"arrowstyle": "<|-", "color": colour, "linewidth": 1.4})
                    any_open = True
                top = max(top, np.nanmax(caps), np.nanmax(tops) if not np.isnan(tops).all() else 0.0)
                ends.append((xs[-1], caps[-1], shown_as[scenario], colour))
            ax.set_ylim(0, 1.15 * top if top > 0 else 1)
            gap = 0.075 * ax.get_ylim()[1]
            for (x, y, name, colour), y_text in zip(ends, spread_labels([e[1] for e in ends], gap, gap / 2)):
                ax.annotate(name, (x, y), xytext=(len(settings) - 1 + 0.25, y_text), textcoords="data",
                            color=colour, fontsize="small", va="center", fontweight="bold")
            ax.set_xlim(-0.3, len(settings) - 1 + 0.95)
            ax.set_xticks(range(len(settings)), [ALONE if not b else _tick(b) for b in settings])
            ax.get_xticklabels()[0].set_fontweight("bold")
            if len(settings) > 1:
                ax.axvline(0.5, color="grey", linestyle=":", linewidth=0.8)
            knobs = set(part["knob"])
            ax.set_ylabel(f"{tenant}'s capacity: " + (LEVEL_AXIS[knobs.pop()] if len(knobs) == 1 else "its load"))
            ax.set_xlabel(_x_label(part, neighbours))
            ax.grid(alpha=0.3)
            title = f"{tenant}'s SLO capacity alone and beside {neighbours or 'no neighbour'}"
            ax.set_title(title + (f", attainment target {target:g}" if len(targets) > 1 else
                                  f" (attainment target {target:g})"), fontsize="medium")
    key: list = [Line2D([], [], color="dimgrey", marker="o", linewidth=1.8)]
    names = ["capacity: the highest level proven feasible"]
    if any_bar:
        key.append(Patch(facecolor="dimgrey", alpha=0.3, linewidth=0))
        names.append("bar: up to the lowest level proven infeasible")
    if any_unresolved:
        key.append(Line2D([], [], color="dimgrey", marker="o", markerfacecolor="white", linestyle="none"))
        names.append("hollow: unresolved (the search did not settle)")
    if any_open:
        key.append(Line2D([], [], color="dimgrey", marker="$\\uparrow$", markersize=9, linestyle="none"))
        names.append("arrow: no level proven infeasible (at least this)")
    axes[-1][0].legend(key, names, loc="upper left", bbox_to_anchor=(-0.02, -0.2), ncol=2, fontsize="small",
                       frameon=False, columnspacing=1.2, handlelength=1.8)
    return save(fig, out, FIGURE)


def _tick(beside: str) -> str:
    """A setting's tick: its level where one neighbour loads, the whole setting otherwise."""
    pairs = parse_beside(beside)
    return f"{pairs[0][1]:g}" if len(pairs) == 1 else beside


def _x_label(part: pd.DataFrame, neighbours: str) -> str:
    if not neighbours:
        return "neighbour setting"
    if "+" in neighbours:
        return f"neighbours' levels ({neighbours})"
    knobs = set(part.loc[part["neighbours"] == neighbours, "neighbour_knob"].dropna())
    return f"{neighbours}'s " + (LEVEL_AXIS[knobs.pop()] if len(knobs) == 1 else "load level")


def write_capacity_report(data: Capacity, out: Path) -> list[Path]:
    """The table and the figure; nothing where no capacity.json was found."""
    if data.empty:
        return []
    return [*write_capacity_table(data, out), *plot_capacity(data, out)]


# --- the report's part --------------------------------------------------------------------------


def capacity_sentences(data: Capacity) -> list[str]:
    """Per scenario and target, what the tenant held alone and beside each setting, with the
    share it kept; per setting several scenarios share, the mode that kept the most and the
    least; every unresolved search and every file left out. Plain text (no LaTeX)."""
    table = capacity_table(data)
    several = table["target"].nunique() > 1
    names = reader_names(table["scenario"], table["sharing_mode"])
    out = []
    for (scenario, target), part in table.groupby(["scenario", "target"], sort=False):
        first = part.iloc[0]
        where = f"under {names[scenario]}"
        at = f" at attainment target {target:g}" if several else ""

        def held(r: pd.Series, unit: str = "") -> str:
            text = amount(r["capacity"], r["first_infeasible"])[1] + (unit if pd.notna(r["capacity"]) else "")
            return text + ("" if r["resolved"] else " (unresolved)")

        alone = part[part["beside"] == ""]
        unit = f" {first['unit']}"
        line = (f"{first['tenant']} holds {held(alone.iloc[0], unit) if not alone.empty else 'an unknown level'} "
                f"alone {where}{at}")
        besides = [f"{held(r)} beside {r['beside']}" + (f" (kept {r['kept']:.2f})" if pd.notna(r["kept"]) else "")
                   for _, r in part[part["beside"] != ""].iterrows()]
        if besides:
            line += ", " + (", ".join(besides[:-1]) + " and " if len(besides) > 1 else "") + besides[-1]
        out.append(line + ".")
    for (target, beside), part in table[table["kept"].notna()].groupby(["target", "beside"], sort=False):
        if part["scenario"].nunique() < 2:
            continue
        best, worst = part.loc[part["kept"].idxmax()], part.loc[part["kept"].idxmin()]
        at = f" at attainment target {target:g}" if several else ""
        out.append(f"Beside {beside}{at}, {best['tenant']} kept the most of its capacity alone under "
                   f"{names[best['scenario']]} ({best['kept']:.2f}) and the least under {names[worst['scenario']]} "
                   f"({worst['kept']:.2f}).")
    out += [f"Unresolved: {r.tenant} under {names[r.scenario]}, {r.beside or ALONE}, target {r.target:g}: {r.why}."
            for r in table[~table["resolved"].astype(bool)].itertuples()]
    return out + [f"Left out: {why}." for why in data.left_out]


def capacity_part(data: Capacity, figures_dir: Path, tex: Callable[[str], str]) -> str:
    """The Isolation section's capacity part, in LaTeX (`tex` escapes text): what the capacity
    is, its table and figure where drawn, and the sentences; empty where no capacity.json was
    found."""
    if data.empty:
        return ""
    figure = ""
    if (figures_dir / f"{FIGURE}.pdf").exists():
        tenants = " and ".join(tex(t) for t in sorted(data.rows["tenant"].unique()))
        drawn = data.rows[data.rows["capacity"].notna()]
        marks = (" Hollow points are unresolved." if not drawn["resolved"].astype(bool).all() else "") + (
            " An arrow: no level was proven infeasible (the capacity is at least that)."
            if drawn["first_infeasible"].isna().any() else "")
        figure = (rf"\begin{{figure*}}[t]\centering\includegraphics[width=\textwidth]{{figures/{FIGURE}.pdf}}"
                  rf"\caption{{{tenants}'s SLO capacity alone and beside each neighbour level, one line per sharing "
                  r"mode: the line joins the highest level proven to meet the attainment target; the bar at each "
                  r"level reaches up to the lowest level proven not to (first infeasible), the search's bracket, "
                  rf"where the capacity lies.{marks}}}\label{{fig:{FIGURE}}}\end{{figure*}}")
    sentences = "\n".join(tex(line) for line in capacity_sentences(data))
    return rf"""A tenant's capacity is the highest level of its own load (its request rate on an open loop, its
concurrency on a closed one) at which its SLO attainment was proven to meet the target: the Wilson 95\% interval of
its share of good requests lies wholly at or above it. Each scenario searched it alone (the neighbours' servers up
and idle) and then beside each level of its neighbours' load; Table~\ref{{tab:{TABLE}}} gives it, with kept, the
capacity beside a neighbour over the capacity alone (1: the neighbour cost nothing).
\begin{{table*}}[t]\centering\caption{{Capacity alone and beside each neighbour setting, per scenario and attainment
target; in brackets, kept = beside / alone; *: unresolved.}}\label{{tab:{TABLE}}}
\resizebox{{\ifdim\width>\textwidth\textwidth\else\width\fi}}{{!}}{{\input{{figures/{TABLE}.tex}}}}
\end{{table*}}
{figure}

{sentences}

"""
