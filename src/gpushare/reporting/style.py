"""How every figure and table of the reports looks and is written: one colour per scenario
(per sharing mode where a figure draws a line per mode), legends outside the plot, each
figure as PNG and PDF, Markdown tables.

Figures are drawn to files only: `subplots` selects matplotlib's file backend (Agg) where a
figure is drawn, so importing the reporting modules changes nothing process-wide.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Iterable

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

BACKEND = "Agg"
"""Files only, no display."""


def subplots(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """`pyplot.subplots` on the file backend, chosen here, where a figure is first drawn."""
    matplotlib.use(BACKEND)  # once Agg, a no-op
    return plt.subplots(*args, **kwargs)


def colours(scenarios: Iterable[str]) -> dict[str, tuple]:
    """A colour per scenario, by name, so that one scenario reads the same in every figure."""
    names = sorted(set(scenarios))
    palette = plt.get_cmap("tab10")
    return {name: palette(i % 10) for i, name in enumerate(names)}


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
    """The figure as out/NAME.png and out/NAME.pdf, then closed."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def close(fig: Figure) -> None:
    """A figure left unsaved (it had nothing to show)."""
    plt.close(fig)


def legend(ax: Axes) -> None:
    """Outside the plot, to the right, so that it never covers data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)


def markdown(shown: pd.DataFrame) -> str:
    """A Markdown table of cells already formatted for reading."""
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
