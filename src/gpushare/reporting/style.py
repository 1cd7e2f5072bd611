"""How every figure and table of the reports looks and is written.

One colour per sharing mode in every figure (SHARING_MODE_COLOURS), one marker per tenant, a
line style per scenario among the scenarios of one mode, and for the phases of `interfere` a
hollow marker and a dashed line alone, a filled marker and a solid line shared: `Look` holds
these for a run set and is what the figure functions are given. A scenario is shown by its
sharing mode in words (MODE_NAMES), with its name only where two scenarios ran one mode. Legends
are short (a few entries: modes, phases, servers), outside the data. Figures are drawn at the
width the report prints them (COLUMN_IN or PAGE_IN) with fonts sized for that width and
matplotlib's constrained layout, so that no label is clipped, and written as PNG and PDF;
tables as Markdown.

Figures are drawn to files only: `subplots` selects matplotlib's file backend (Agg) where a
figure is drawn, so importing the reporting modules changes nothing process-wide.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

BACKEND = "Agg"
"""Files only, no display."""


COLUMN_IN = 3.5
"""The report's column width (IEEEtran), inches: a figure this wide is printed at its size."""
PAGE_IN = 7.16
"""The report's text width, inches: a wider figure spans both columns."""
DPI = 200
RC = {"font.size": 7.5, "axes.titlesize": 7.5, "axes.labelsize": 7.5, "xtick.labelsize": 6.5,
      "ytick.labelsize": 6.5, "legend.fontsize": 6.5, "figure.titlesize": 8, "lines.linewidth": 1.3,
      "lines.markersize": 4.5, "errorbar.capsize": 2, "axes.titlepad": 3}
"""Fonts for a figure printed at its drawn size: 6.5 to 8 pt, as the report's captions."""
SMOOTHING_S = 2.0
"""The GPU timeline's rolling window, seconds."""

F = TypeVar("F", bound=Callable[..., Any])


def styled(fn: F) -> F:
    """A figure function drawn (and saved) under RC, leaving matplotlib's settings as they were."""
    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        with plt.rc_context(RC):
            return fn(*args, **kwargs)
    return inner  # type: ignore[return-value]


def subplots(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """`pyplot.subplots` on the file backend, chosen here, where a figure is first drawn; laid
    out by matplotlib's constrained layout, which keeps every label and legend inside the figure."""
    matplotlib.use(BACKEND)  # once Agg, a no-op
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(*args, **kwargs)


def width_for(panels: int) -> float:
    """A figure's width: the column for one panel, the page for several."""
    return COLUMN_IN if panels <= 1 else PAGE_IN


SHARING_MODE_COLOURS = {"timeslice": "tab:blue", "mps": "tab:orange", "mig": "tab:green",
                        "mig_emulation": "tab:red", "baseline": "tab:purple"}
"""The registered sharing modes' colours: fixed, so that a mode reads the same in every figure
coloured by mode whichever modes a run set holds."""


def sharing_mode_colour(mode: str) -> tuple:
    """A colour per sharing mode, by name; a mode not in SHARING_MODE_COLOURS gets one of the
    palette's other colours, chosen by its name (the same every time)."""
    if mode in SHARING_MODE_COLOURS:
        return to_rgba(SHARING_MODE_COLOURS[mode])
    spare = ["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    return to_rgba(spare[zlib.crc32(mode.encode()) % len(spare)])


def save(fig: Figure, out: Path, name: str) -> list[Path]:
    """The figure as out/NAME.png and out/NAME.pdf at its drawn size, then closed. The PDF
    carries no creation date, so drawing the same data again writes the same bytes."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=DPI, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def close(fig: Figure) -> None:
    """A figure left unsaved (it had nothing to show)."""
    plt.close(fig)


def markdown(shown: pd.DataFrame) -> str:
    """A Markdown table of cells already formatted for reading."""
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))


# --- how each series is drawn --------------------------------------------------------------------

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
"""One per tenant, by name in sorted order; a whole run (no tenant) takes the first."""
LINE_STYLES = ["-", "--", ":", "-."]
"""One per scenario among the scenarios of one sharing mode, in name order."""
ALONE, SHARED = "alone", "shared"
PHASE_LINE = {ALONE: "--", SHARED: "-"}
_LOADED = re.compile(r"\[([^\]]*)\]:[^ ]+")


def loaded_tenants(series: str) -> list[str]:
    """The tenants a tenant row's run loaded (`scenario[a+b]:tenant`, run_tables.run_rows);
    none for a whole run."""
    found = _LOADED.search(series)
    return found.group(1).split("+") if found else []


def phase_of(series: str) -> str | None:
    """ALONE where a tenant row's run loaded its tenant only, SHARED where it loaded several,
    None for a whole run."""
    loaded = loaded_tenants(series)
    return None if not loaded else ALONE if len(loaded) == 1 else SHARED


def base_scenario(series: str) -> str:
    """The scenario a series belongs to: a tenant row's name less its phase and tenant."""
    return _LOADED.sub("", series)


MODE_NAMES = {"baseline": "one server", "timeslice": "time-slicing", "mps": "MPS",
              "mig_emulation": "MIG-like caps", "mig": "MIG"}
"""What a reader calls each registered sharing mode, in prose, legends and tick labels alike."""


def mode_name(mode: str) -> str:
    return MODE_NAMES.get(mode, mode)


def reader_names(scenarios: pd.Series, modes: pd.Series) -> dict[str, str]:
    """What a reader is shown for each scenario (scenarios[i] ran under modes[i]): its sharing
    mode, and its name beside the mode only where two of the scenarios ran under one mode."""
    cases = pd.DataFrame({"scenario": scenarios.to_numpy(), "mode": modes.to_numpy()}).drop_duplicates("scenario")
    twice = cases["mode"].duplicated(keep=False)
    return {r.scenario: f"{mode_name(r.mode)} [{r.scenario}]" if repeated else mode_name(r.mode)
            for r, repeated in zip(cases.itertuples(), twice)}


@dataclass(frozen=True)
class Look:
    """How each series (a scenario as a figure names it) is drawn. Indexing gives its colour,
    its sharing mode's; `marker` its tenant's; `linestyle` its phase's (dashed alone, solid
    shared) or, for a whole run, its scenario's among those of its mode; `filled` False alone.
    `modes` maps every series and scenario to its sharing mode, `tenants` a tenant row's
    series to its tenant."""

    modes: dict[str, str]
    tenants: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, series: str) -> tuple:
        return sharing_mode_colour(self.mode(series))

    def mode(self, series: str) -> str:
        return self.modes.get(series, self.modes.get(base_scenario(series), "unknown"))

    def tenant(self, series: str) -> str | None:
        return self.tenants.get(series)

    def marker(self, series: str) -> str:
        names = sorted(set(self.tenants.values()))
        tenant = self.tenant(series)
        return MARKERS[names.index(tenant) % len(MARKERS)] if tenant in names else MARKERS[0]

    def scenario_style(self, series: str) -> str:
        mode = self.mode(series)
        peers = sorted({base_scenario(s) for s, m in self.modes.items() if m == mode})
        base = base_scenario(series)
        return LINE_STYLES[peers.index(base) % len(LINE_STYLES)] if base in peers else LINE_STYLES[0]

    def linestyle(self, series: str) -> str:
        phase = phase_of(series)
        return PHASE_LINE[phase] if phase else self.scenario_style(series)

    def filled(self, series: str) -> bool:
        return phase_of(series) != ALONE

    @functools.cached_property
    def _names(self) -> dict[str, str]:
        """reader_names of the run set's scenarios, worked out once per Look."""
        bases = sorted({base_scenario(s) for s in self.modes})
        return reader_names(pd.Series(bases), pd.Series([self.mode(b) for b in bases]))

    def name(self, series: str) -> str:
        """A scenario's legend entry or tick label: its sharing mode in words, and its name only
        where another scenario of that mode is in the run set (reader_names)."""
        base = base_scenario(series)
        return self._names.get(base, mode_name(self.mode(base)))

    def points(self, series: str) -> dict[str, Any]:
        """Keyword arguments of a plotted series: colour, marker (hollow alone), line style, and
        the mode as the artists' gid, so that a figure's colours can be checked against its modes."""
        colour = self[series]
        return {"color": colour, "marker": self.marker(series), "linestyle": self.linestyle(series),
                "markerfacecolor": colour if self.filled(series) else "white", "markeredgecolor": colour,
                "gid": self.mode(series)}


def look(*frames: pd.DataFrame) -> Look:
    """The Look of the series in frames with `scenario` and `sharing_mode` columns (and
    `tenant`, where rows are tenants')."""
    modes: dict[str, str] = {}
    tenants: dict[str, str] = {}
    for frame in frames:
        for row in frame.itertuples(index=False):
            modes[row.scenario] = row.sharing_mode
            modes.setdefault(base_scenario(row.scenario), row.sharing_mode)
            tenant = getattr(row, "tenant", None)
            if isinstance(tenant, str):
                tenants[row.scenario] = tenant
    return Look(modes, tenants)


def key(look_: Look, series: Iterable[str], *, phases: bool | None = None, line: bool = True
        ) -> tuple[list, list[str]]:
    """A short legend: one entry per scenario (its mode's colour, its line style among the
    mode's scenarios), then, where the series hold phases, what alone and shared look like."""
    series = list(series)
    handles: list = []
    names: list[str] = []
    for base in sorted({base_scenario(s) for s in series}):
        colour = look_[base]
        handles.append(Line2D([], [], color=colour, linestyle=look_.scenario_style(base) if line else "none",
                              marker=None if line else "s", markersize=6))
        names.append(look_.name(base))
    if phases is None:
        phases = any(phase_of(s) for s in series)
    if phases:
        for phase in (ALONE, SHARED):
            handles.append(Line2D([], [], color="dimgrey", marker="o", linestyle=PHASE_LINE[phase] if line else "none",
                                  markerfacecolor="white" if phase == ALONE else "dimgrey"))
            names.append(f"{phase} ({'tenant alone' if phase == ALONE else 'all tenants loading'})")
    return handles, names


def figure_legend(fig: Figure, handles: list, names: list[str], where: str = "bottom") -> None:
    """A legend outside the panels, which constrained layout makes room for: below, in as many
    columns as the figure's width holds (one on a column-wide figure), or to the right."""
    if not handles:
        return
    if where == "right":
        fig.legend(handles, names, loc="outside right upper", frameon=False)
        return
    columns = 1 if fig.get_figwidth() <= COLUMN_IN + 0.01 else 2 if len(names) == 4 else min(len(names), 3)
    fig.legend(handles, names, loc="outside lower center", frameon=False, ncols=columns)


def wrapped(text: str, width: int = 14) -> str:
    """A tick label on several lines, broken after '-', '_' or a space, so that it can be horizontal."""
    parts = re.findall(r"[^-_ ]+[-_ ]?", text) or [text]
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + len(part.rstrip()) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(line.strip() for line in lines)


def spread_labels(ys: list[float], gap: float, floor: float = -math.inf) -> list[float]:
    """Heights for labels at lines' ends (ys), at least `gap` apart: labels that would overlap are
    stacked `gap` apart, centred on the mean of their lines' ends, and none below `floor`."""
    clusters: list[list[int]] = []
    for i in sorted(range(len(ys)), key=lambda i: ys[i]):
        clusters.append([i])
        while len(clusters) > 1:
            low, high = clusters[-2], clusters[-1]
            low_top = np.mean([ys[j] for j in low]) + (len(low) - 1) * gap / 2
            high_bottom = np.mean([ys[j] for j in high]) - (len(high) - 1) * gap / 2
            if high_bottom - low_top >= gap:
                break
            clusters[-2:] = [low + high]
    placed = list(ys)
    for members in clusters:
        centre = float(np.mean([ys[j] for j in members]))
        for k, j in enumerate(members):
            placed[j] = centre + (k - (len(members) - 1) / 2) * gap
    last = floor - gap
    for i in sorted(range(len(ys)), key=lambda i: placed[i]):
        placed[i] = last = max(placed[i], last + gap)
    return placed
