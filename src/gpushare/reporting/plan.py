"""`gpushare plan`'s plan.json as a table, a figure and the report's Plan section.

A plan seats tenants on GPUs; each seat's target is a share of its capacity there, at most
1 - margin, and each GPU was proven (or refuted) by a measured run of its tenants together at
their targets. `analysis.analyze` writes plan_table.* and the plan figure where --runs holds a
plan.json; `report` adds the Plan section. Bars are coloured by the GPU's placement, read as the
sharing mode its proof ran under (style.sharing_mode_colour).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import offset_copy

from ..measure.plan_doc import PLAN_JSON, PlanDoc, SeatDoc, StoreUnreadable, read_plan_doc
from .found import read_found
from .style import markdown, save, sharing_mode_colour, subplots

TABLE, FIGURE = "plan_table", "plan"
ROW_FIELDS = ["plan", "gpu_index", "gpu", "placement", "tenant", "slice", "target", "unit", "capacity", "headroom",
              "attainment", "attainment_target", "wilson_low", "proven", "energy_per_token_j", "proof_run_dir"]
MODES = {"engine": "baseline", "dedicated": "baseline"}
"""Placements that run one server for the GPU's tenants: the proof runs them as baseline."""
REFUTED = {"hatch": "xx", "edgecolor": "black"}
"""How a refuted GPU's bars are marked: in black, since one placement's colour is red."""


def find_plans(paths: Iterable[Path]) -> list[Path]:
    """Every plan.json at or under the given folders."""
    return sorted({file for path in map(Path, paths) for file in path.rglob(PLAN_JSON) if file.is_file()})


@dataclass(frozen=True)
class Plans:
    """The plan docs that read, with their files; those that do not are in `left_out`, with why."""

    docs: list[tuple[Path, PlanDoc]]
    left_out: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.docs


def read_plans(files: Iterable[Path]) -> Plans:
    return Plans(*read_found(files, read_plan_doc, StoreUnreadable, "plan.json"))


def fell_short(seat: SeatDoc) -> bool:
    """The proof run did not meet the seat's attainment target (or measured none)."""
    return seat.attainment is None or seat.attainment < seat.attainment_target


# --- the table ----------------------------------------------------------------------------------


def plan_table(plans: Plans) -> pd.DataFrame:
    """One row per seat of every plan, the numbers as plan.json holds them."""
    rows = [{"plan": doc.plan, "gpu_index": gpu.index, "gpu": gpu.gpu, "placement": gpu.placement,
             **seat.model_dump(include={"tenant", "slice", "target", "unit", "capacity", "headroom", "attainment",
                                        "attainment_target", "wilson_low"}),
             "proven": gpu.proven, "energy_per_token_j": gpu.energy_per_token_j, "proof_run_dir": gpu.proof_run_dir}
            for _, doc in plans.docs for gpu in doc.gpus for seat in gpu.seats]
    return pd.DataFrame(rows, columns=ROW_FIELDS)


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None or pd.isna(value) else format(value, spec)


def _where(run_dir: str | None, file: Path) -> str:
    """A proof run's folder, relative to its plan's folder where it lies under it."""
    if not run_dir:
        return "–"
    path = Path(run_dir)
    return str(path.relative_to(file.parent)) if path.is_relative_to(file.parent) else run_dir


def _shown(plans: Plans) -> pd.DataFrame:
    several = len({doc.plan for _, doc in plans.docs}) > 1
    shown = []
    for file, doc in plans.docs:
        for gpu in doc.gpus:
            for seat in gpu.seats:
                row = {"Plan": doc.plan} if several else {}
                shown.append(row | {
                    "GPU": gpu.index, "Model": gpu.gpu, "Placement": gpu.placement, "Tenant": seat.tenant,
                    "Slice": seat.slice or "–", "Target": f"{seat.target:g} {seat.unit}",
                    "Capacity": _fmt(seat.capacity, ".4g"), "Headroom": _fmt(seat.headroom, ".0%"),
                    "Attainment (target)": f"{_fmt(seat.attainment, '.3f')} ({seat.attainment_target:g})",
                    "Wilson low": _fmt(seat.wilson_low, ".3f"), "Proven": "yes" if gpu.proven else "REFUTED",
                    "Energy/token (J)": _fmt(gpu.energy_per_token_j, ".3f"),
                    "Proof run": _where(gpu.proof_run_dir, file)})
    return pd.DataFrame(shown)


def write_plan_table(plans: Plans, out: Path) -> list[Path]:
    """plan_table.csv (numbers), .md and .tex (formatted; the report inputs the .tex)."""
    paths = [out / f"{TABLE}.csv", out / f"{TABLE}.md", out / f"{TABLE}.tex"]
    plan_table(plans).to_csv(paths[0], index=False)
    shown = _shown(plans)
    notes = "".join(f"\nLeft out: {why}\n" for why in plans.left_out)
    paths[1].write_text((markdown(shown) if not shown.empty else "No plan seats any tenant.\n") + notes)
    latex = shown.to_latex(index=False, escape=True) if not shown.empty else "No plan seats any tenant.\n"
    paths[2].write_text(latex.replace("–", "--"))
    return paths


# --- the figure ---------------------------------------------------------------------------------


def plot_plans(plans: Plans, out: Path) -> list[Path]:
    """Per plan a panel; per GPU a group of bars, one per seat: its target over its capacity
    there, coloured by the GPU's placement, hatched where the proof run refuted the GPU; the
    dashed line is 1 - margin, the most a seat may take; at the right, each seat's measured
    attainment against its target, bold where it fell short. Nothing where no plan seats a
    tenant."""
    drawn = [(file, doc) for file, doc in plans.docs if any(gpu.seats for gpu in doc.gpus)]
    if not drawn:
        return []
    heights = [sum(len(g.seats) + 1.2 for g in doc.gpus) for _, doc in drawn]
    fig, axes = subplots(len(drawn), 1, figsize=(7.5, 0.32 * sum(heights) + 1.3 * len(drawn) + 0.6),
                         gridspec_kw={"height_ratios": heights}, squeeze=False)
    modes: dict[str, str] = {}
    any_refuted = False
    for ax, (_, doc) in zip(axes[:, 0], drawn):
        y, ticks, names, top = 0.0, [], [], 1.0
        for gpu in doc.gpus:
            refuted = not gpu.proven
            any_refuted |= refuted
            verdict = "REFUTED" if refuted else "proven"
            ax.text(0.01, y, f"GPU {gpu.index}: {gpu.gpu}, {gpu.placement} — {verdict}", fontweight="bold",
                    fontsize="small", va="center", transform=ax.get_yaxis_transform())
            y += 1
            mode = MODES.get(gpu.placement, gpu.placement)
            modes.setdefault(gpu.placement, mode)
            for seat in gpu.seats:
                share = seat.target / seat.capacity if seat.capacity else None
                if share is not None:
                    top = max(top, share)
                    ax.barh(y, share, height=0.7, color=sharing_mode_colour(mode), alpha=0.85,
                            **(REFUTED if refuted else {"edgecolor": "none"}))
                else:
                    ax.text(0.01, y, "no capacity measured", fontsize="small", va="center", color="dimgrey",
                            transform=ax.get_yaxis_transform())
                short = fell_short(seat)
                ax.annotate(f"{_fmt(seat.attainment, '.3f')} {'<' if short else '≥'} {seat.attainment_target:g}",
                            (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize="small",
                            fontweight="bold" if short else "normal", annotation_clip=False)
                ticks.append(y)
                names.append(seat.tenant + (f" ({seat.slice})" if seat.slice else ""))
                y += 1
            y += 0.2
        ax.axvline(1 - doc.margin, color="black", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1.08 * top)
        ax.set_ylim(y - 0.6, -0.7)
        ax.set_yticks(ticks, names)
        ax.grid(axis="x", alpha=0.3)
        ax.annotate("attainment\n(target)", (1.01, 1.0), xycoords="axes fraction", va="bottom", fontsize="small")
        ax.set_title(f"plan {doc.plan}: {_count(doc.gpus_used, 'GPU')} (dedicated {doc.dedicated}, "
                     f"lower bound {doc.lower_bound})", fontsize="medium")
    axes[-1, 0].set_xlabel("each seat's target as a share of its capacity there (target / capacity)")
    key: list = [Patch(color=sharing_mode_colour(mode), alpha=0.85) for mode in modes.values()]
    labels = [placement if mode == placement else f"{placement} ({mode})" for placement, mode in modes.items()]
    margins = sorted({doc.margin for _, doc in drawn})
    key.append(Line2D([], [], color="black", linestyle="--", linewidth=1))
    labels.append("1 − margin: the most a seat may take" + (f" ({1 - margins[0]:g})" if len(margins) == 1 else ""))
    if any_refuted:
        key.append(Patch(facecolor="white", **REFUTED))
        labels.append("refuted by its proof run")
    below = offset_copy(axes[-1, 0].transAxes, fig=fig, y=-34, units="points")
    axes[-1, 0].legend(key, labels, loc="upper left", bbox_to_anchor=(-0.02, 0), bbox_transform=below, ncol=2,
                       fontsize="small", frameon=False)
    return save(fig, out, FIGURE)


def write_plan_report(plans: Plans, out: Path) -> list[Path]:
    """The table and the figure; nothing where no plan.json was found."""
    if plans.empty:
        return []
    return [*write_plan_table(plans, out), *plot_plans(plans, out)]


# --- the report's part --------------------------------------------------------------------------


def _count(n: int | None, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _join(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def plan_sentences(doc: PlanDoc) -> list[str]:
    """What the plan packs onto how many GPUs against dedicated and the bound; which GPUs its
    proof runs proved or refuted; the margin and the tightest seat. Plain text (no LaTeX)."""
    if doc.status == "no_plan" or not doc.gpus:
        return [f"Plan {doc.plan} found no plan: {doc.why}."]
    seats = [(gpu, seat) for gpu in doc.gpus for seat in gpu.seats]
    models = _join([f"{n} {model}" for model, n in Counter(g.gpu for g in doc.gpus).items()])
    bound = f"{doc.method or 'unknown'} search, " + ("optimal" if doc.optimal else "not proven optimal")
    out = [f"The plan {doc.plan} packs {_count(len(seats), 'tenant')} onto {_count(doc.gpus_used, 'GPU')} "
           f"({models}) against {doc.dedicated} dedicated, with a lower bound of {doc.lower_bound} ({bound})."]
    measured = [(gpu, s) for gpu, s in seats if s.attainment is not None]
    if all(gpu.proven for gpu in doc.gpus):
        line = "Every GPU was proven by a measured run of its tenants together at their targets"
        if measured:
            gpu, low = min(measured, key=lambda p: p[1].attainment or 0.0)
            line += (f" (lowest attainment {low.attainment:.3f} against target {low.attainment_target:g}, "
                     f"{low.tenant} on GPU {gpu.index})")
        out.append(line + ".")
    else:
        for gpu in doc.gpus:
            who = _join([s.tenant for s in gpu.seats])
            if gpu.proven:
                out.append(f"GPU {gpu.index} ({gpu.gpu}, {gpu.placement}: {who}) was proven by its proof run.")
                continue
            short = [f"{s.tenant} {_fmt(s.attainment, '.3f')} against {s.attainment_target:g}"
                     for s in gpu.seats if fell_short(s)]
            out.append(f"GPU {gpu.index} ({gpu.gpu}, {gpu.placement}: {who}) was refuted by its proof run"
                       + (f": {_join(short)}." if short else "."))
        out.append(f"The plan is {doc.status}: {doc.why}.")
    shares = [(gpu, s, s.target / s.capacity) for gpu, s in seats if s.capacity]
    line = f"Each seat's target is at most {1 - doc.margin:.0%} of its capacity there (margin {doc.margin:.0%})"
    if shares:
        gpu, tight, share = max(shares, key=lambda t: t[2])
        line += f"; the fullest seat is {tight.tenant} on GPU {gpu.index} at {share:.0%}"
    out.append(line + ".")
    if doc.refuted:
        out.append(f"{_count(len(doc.refuted), 'group')} of tenants refuted by proof runs in its store will not "
                   "be recommended again.")
    return out


def plan_part(plans: Plans, figures_dir: Path, tex: Callable[[str], str]) -> str:
    """The Plan section in LaTeX (`tex` escapes text): the sentences, the table and the figure
    where drawn; empty where no plan.json was found."""
    if plans.empty:
        return ""
    sentences = "\n".join(tex(line) for _, doc in plans.docs for line in plan_sentences(doc))
    sentences += "".join(f"\n{tex(f'Left out: {why}.')}" for why in plans.left_out)
    figure = "" if not (figures_dir / f"{FIGURE}.pdf").exists() else (
        rf"\begin{{figure*}}[t]\centering\includegraphics[width=\textwidth]{{figures/{FIGURE}.pdf}}"
        r"\caption{Each seat's target as a share of its capacity on its GPU, coloured by the GPU's placement; "
        r"dashed: 1 $-$ margin, the most a seat may take; at the right, the attainment its proof run measured "
        rf"against its target.}}\label{{fig:{FIGURE}}}\end{{figure*}}")
    return rf"""
\section{{Plan}}
A plan seats each tenant on a GPU at its target load, the fewest GPUs whose measured capacities hold every target
with the margin to spare; each GPU is then run with its tenants together at their targets and proven when every one
of them meets its attainment target. Table~\ref{{tab:{TABLE}}} gives each seat.
\begin{{table*}}[t]\centering\caption{{The plan's seats: target, capacity, headroom and the proof run's attainment
(target), per GPU.}}\label{{tab:{TABLE}}}
\resizebox{{\ifdim\width>\textwidth\textwidth\else\width\fi}}{{!}}{{\input{{figures/{TABLE}.tex}}}}
\end{{table*}}
{figure}

{sentences}
"""
