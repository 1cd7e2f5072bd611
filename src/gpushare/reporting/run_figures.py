"""The figures of a set of runs, drawn from the tidy table (run_tables.py): each metric against
load, the throughput-latency trade-off, latency and token-length distributions, GPU timelines
and per-server bars.

Every figure colours a series by its sharing mode (style.Look: the same mode reads the same
in every figure), labels its axes with units, and shows the spread of repeated runs (error
bars: one standard deviation), not only their mean. A tenant's phases (alone, shared) are
panels and markers of their own, never loads of one line.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ..core.files import GPU_SAMPLES, REQUESTS
from ..measure.metric_catalog import METRICS
from ..measure.metrics import process_memory
from ..measure.results import SummaryUnreadable, read_run
from .style import (ALONE, LINE_STYLES, PAGE_IN, SHARED, SMOOTHING_S, Look, base_scenario,
                    figure_legend, key, loaded_tenants, phase_of, save, spread_labels, styled, subplots, width_for,
                    wrapped)


def _spread(std: pd.Series) -> pd.Series | None:
    """Error bars from repeated runs; none where every point is a single run."""
    return None if std.isna().all() else std.fillna(0)


def _load_axis_label(runs: pd.DataFrame) -> str:
    return "request rate (req/s)" if (runs["load_mode"] == "open_loop").all() else "concurrency (requests in flight)"


WHOLE = "every tenant"
"""A facet of whole runs (no tenant)."""


def _facets(series: Iterable[str], colour: Look) -> list[tuple[str | None, list[str]]]:
    """Panels of a figure: whole runs together, then one per tenant (its runs alone and shared),
    so that one tenant's solo and shared phases are compared side by side and never mixed with
    another tenant's."""
    series = sorted(set(series))
    whole = [s for s in series if colour.tenant(s) is None]
    tenants = sorted({t for s in series if (t := colour.tenant(s)) is not None})
    return ([(None, whole)] if whole else []) + [(t, [s for s in series if colour.tenant(s) == t]) for t in tenants]


def _facet_title(tenant: str | None, summary: pd.DataFrame | None = None, series: list[str] | None = None,
                 knob: str = "") -> str:
    """A panel's title: its tenant, and its load where every point of the panel ran the same."""
    title = "whole runs" if tenant is None else f"tenant {tenant}"
    if summary is not None and series is not None:
        loads = summary.loc[summary["scenario"].isin(series), "load"].unique()
        if len(loads) == 1:
            title += f", {knob.split(' (')[0]} {loads[0]:g}"
    return title


def _draw_series(ax: Axes, summary: pd.DataFrame, series: list[str], x: str, y: str, colour: Look,
                 x_label: str, annotate: bool = False) -> None:
    """Each series as points joined across its loads. Where every series of the panel ran one
    load (interfere's phases), the panel is categorical instead: a column per scenario, alone
    left and shared right of it, never one line from alone to shared."""
    part = summary[summary["scenario"].isin(series)]
    single = x == "load" and part["load"].nunique() == 1
    bases = sorted({base_scenario(s) for s in series})
    for name in series:
        line = part[part["scenario"] == name].sort_values("load")
        if single:
            offset = {ALONE: -0.15, SHARED: 0.15}.get(phase_of(name) or "", 0.0)
            xs: Any = np.full(len(line), bases.index(base_scenario(name)) + offset)
            xerr = None
        else:
            xs, xerr = line[x], _spread(line[f"{x}_std"]) if f"{x}_std" in line else None
        ax.errorbar(xs, line[y], xerr=xerr, yerr=_spread(line[f"{y}_std"]), **colour.points(name))
        if annotate and part["load"].nunique() > 1:
            for xv, yv, load in zip(line[x], line[y], line["load"]):
                ax.annotate(f"{load:g}", (xv, yv), fontsize=5.5, textcoords="offset points", xytext=(3, 3))
    if single:
        chars = max(6, int((ax.figure.get_figwidth() / len(ax.figure.axes) - 0.5) / len(bases) / 0.055))
        ax.set_xticks(range(len(bases)), [wrapped(colour.name(b), chars) for b in bases])
        for tick, base in zip(ax.get_xticklabels(), bases):
            tick.set_color(colour[base])
        ax.set_xlim(-0.6, len(bases) - 0.4)
        ax.set_xlabel("sharing mode")
    else:
        ax.set_xlabel(x_label)
    ax.grid(alpha=0.3)


@styled
def plot_versus_load(summary: pd.DataFrame, runs: pd.DataFrame, column: str, name: str, out: Path,
                     colour: Look) -> list[Path]:
    """A metric against load: a panel for whole runs and one per tenant; colour: sharing mode."""
    facets = _facets(summary["scenario"], colour)
    fig, axes = subplots(1, len(facets), figsize=(width_for(len(facets)), 2.7), squeeze=False)
    for ax, (tenant, series) in zip(axes[0], facets):
        _draw_series(ax, summary, series, "load", column, colour, _load_axis_label(runs))
        ax.set_title(_facet_title(tenant, summary, series, _load_axis_label(runs)))
        ax.set_ylabel(wrapped(METRICS[column].title, 24))
    figure_legend(fig, *key(colour, summary["scenario"]))
    return save(fig, out, name)


@styled
def plot_tradeoff(summary: pd.DataFrame, out: Path, colour: Look, knob: str = "load") -> list[Path]:
    """Throughput against P99 latency, points labelled with their load; panels as plot_versus_load."""
    facets = _facets(summary["scenario"], colour)
    fig, axes = subplots(1, len(facets), figsize=(width_for(len(facets)), 2.7), squeeze=False)
    for ax, (tenant, series) in zip(axes[0], facets):
        _draw_series(ax, summary, series, "p99_latency_s", "output_throughput", colour,
                     METRICS["p99_latency_s"].title, annotate=True)
        ax.set_title(_facet_title(tenant, summary, series, knob))
        ax.set_ylabel(wrapped(METRICS["output_throughput"].title, 24))
    figure_legend(fig, *key(colour, summary["scenario"]))
    return save(fig, out, "throughput_vs_p99_latency")


def _grid(panels: int, height: float, columns: int = 4, **kwargs: Any) -> tuple[Figure, list[Axes]]:
    """Panels in rows of at most `columns`, the unused ones hidden."""
    cols = min(columns, panels)
    rows = -(-panels // cols)
    fig, axes = subplots(rows, cols, figsize=(width_for(panels), height * rows + 0.5), squeeze=False, **kwargs)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


@styled
def plot_cdfs(requests: pd.DataFrame, runs: pd.DataFrame, out: Path, colour: Look) -> list[Path]:
    """One panel per tenant (whole runs: one) and load; none where no request completed."""
    paths: list[Path] = []
    if requests.empty:
        return paths
    panels = [(tenant, load) for tenant, series in _facets(requests["scenario"], colour)
              for load in sorted(requests.loc[requests["scenario"].isin(series), "load"].unique())]
    knob = _load_axis_label(runs).split(" (")[0]
    for column, label, name in (("ttft_s", "time to first token (s)", "ttft_cdf"),
                                ("e2el_s", "end-to-end latency (s)", "e2e_latency_cdf")):
        fig, axes = _grid(len(panels), 2.3, sharey=True)
        for ax, (tenant, load) in zip(axes, panels):
            mine = requests[(requests["load"] == load)
                            & requests["scenario"].map(lambda s, t=tenant: colour.tenant(s) == t)]
            for scenario, part in mine.groupby("scenario"):
                values = np.sort(part[column].dropna().to_numpy())
                style = colour.points(scenario)
                ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", color=style["color"],
                        linestyle=style["linestyle"], gid=style["gid"])
            ax.set_title(f"{_facet_title(tenant)}, {knob} {load:g}")
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("fraction of requests")
        figure_legend(fig, *key(colour, requests["scenario"]))
        paths += save(fig, out, name)
    return paths


@styled
def plot_token_lengths(requests: pd.DataFrame, out: Path, colour: Look) -> list[Path]:
    """The prompt and output lengths each run sent (its completed measured requests), as
    histograms on log-spaced bins, each run's as shares of its own requests so that runs of
    different sizes compare. Runs that sent one length of each (fixed synthetic lengths) are
    left out, and the figure too where no run varied: a single bar says nothing the config
    does not, and would dwarf the distributions beside it."""
    sides = (("input_tokens", "prompt length (tokens)"), ("output_tokens", "output length (tokens)"))
    columns = [column for column, _ in sides]
    varied = requests.groupby("run")[columns].nunique().gt(1).any(axis=1) if not requests.empty else pd.Series()
    requests = requests[requests["run"].isin(varied[varied].index)] if varied.any() else requests.iloc[0:0]
    if requests.empty:
        return []
    fig, axes = subplots(1, 2, figsize=(PAGE_IN, 2.6))
    for ax, (column, label) in zip(axes, sides):
        bins = np.geomspace(1, max(2.0, requests[column].max() * 1.05), 40)
        for run, part in requests.groupby("run", sort=True):
            scenario = part["scenario"].iloc[0]
            lengths = part[column].dropna()
            style = colour.points(scenario)
            ax.hist(lengths, bins=bins, weights=np.full(len(lengths), 100.0 / max(1, len(lengths))),
                    histtype="step", linewidth=1.1, color=style["color"], linestyle=style["linestyle"],
                    gid=style["gid"])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(label)
        ax.set_ylabel("share of the run's requests (%)")
        ax.grid(alpha=0.3)
    figure_legend(fig, *key(colour, requests["scenario"]))
    return save(fig, out, "token_lengths")


GPU_QUANTITIES = (("gpu_util_pct", "utilisation (%)"), ("power_w", "power (W)"))
"""The timeline's smoothed quantities; memory follows them."""


def timeline_column(series: str) -> str:
    """The GPU timeline's panel for a run: its phase (which tenants loaded) for interfere's
    phases, so that one panel holds the same phase under every mode; its scenario otherwise."""
    loaded = loaded_tenants(series)
    if not loaded:
        return series
    return f"{loaded[0]} alone" if len(loaded) == 1 else f"{'+'.join(loaded)} shared"


def server_memory(gpu: pd.DataFrame, folder: Path) -> dict[str, pd.Series]:
    """Each server's memory (MiB) per sample, from gpu.csv's per-process column matched to the
    process groups summary.json records for its servers; none where either is missing."""
    if "processes" not in gpu:
        return {}
    try:
        groups = {entry.name: entry.pid for entry in read_run(folder).servers if entry.pid}
    except SummaryUnreadable:
        return {}
    per_sample = [process_memory(str(cell)) if isinstance(cell, str) else {} for cell in gpu["processes"]]
    found = {name: pd.Series([row.get(pid, np.nan) for row in per_sample], index=gpu.index, dtype=float)
             for name, pid in groups.items()}
    return {name: used for name, used in found.items() if used.notna().any()}


def smoothed(t: pd.Series, values: pd.Series, window_s: float = SMOOTHING_S) -> np.ndarray:
    """A centred rolling mean over `window_s` seconds of samples taken at times t."""
    index = pd.to_timedelta(t.to_numpy() - t.iloc[0], unit="s")
    return pd.Series(values.to_numpy(dtype=float), index=index).rolling(
        pd.Timedelta(seconds=window_s), center=True, min_periods=1).mean().to_numpy()


@styled
def plot_gpu_timelines(runs: pd.DataFrame, out: Path, colour: Look) -> list[Path]:
    """GPU utilisation, power and memory against time since each run's first measured request,
    as small multiples: a column per phase (interfere) or scenario, a row per quantity, shared
    axes, a scenario's column titled by its sharing mode. Utilisation and power are drawn as a
    SMOOTHING_S rolling mean over the faint raw samples, a power line labelled with its run's
    load where a scenario ran at several; memory per server where gpu.csv's processes match the
    servers, else the GPU's."""
    traces: list[dict] = []
    for _, run in runs.drop_duplicates("run").iterrows():  # a run of several tenants: one GPU trace
        folder = Path(run["run"])
        gpu = pd.read_csv(folder / GPU_SAMPLES)
        gpu = gpu[~gpu["gpu"].astype(str).str.contains(":")]
        requests = pd.read_csv(folder / REQUESTS)
        measured = requests[requests["warmup"] == 0]
        start = measured["sent"].min()
        gpu = gpu[(gpu["t"] >= start) & (gpu["t"] <= measured["end"].max())].reset_index(drop=True)
        if gpu.empty:
            continue
        traces.append({"series": run["scenario"], "gpu": gpu, "start": start, "memory": server_memory(gpu, folder),
                       "load": f"{run['load']:g}", "unit": run["load_unit"]})
    if not traces:
        return []
    order = sorted(traces, key=lambda t: (phase_of(t["series"]) == SHARED, timeline_column(t["series"])))
    columns = list(dict.fromkeys(timeline_column(t["series"]) for t in order))
    runs_of = Counter(t["series"] for t in traces)  # a scenario's runs at several loads share its panel
    per_server = all(t["memory"] for t in traces)
    by_place: dict[int, list[str]] = {}  # a run's servers in name order: its first solid, its second dashed, ...
    for trace in traces:
        for k, name in enumerate(sorted(trace["memory"])):
            by_place.setdefault(k, []).append(name)
    period = float(np.nanmedian(np.concatenate([np.diff(t["gpu"]["t"].to_numpy()) for t in traces])))
    fig, axes = subplots(len(GPU_QUANTITIES) + 1, len(columns), figsize=(width_for(len(columns)), 4.6),
                         sharex=True, sharey="row", squeeze=False)
    ends: dict[int, list[tuple[float, str, tuple]]] = {}  # per column, the power lines' ends to label
    for trace in traces:
        gpu, series = trace["gpu"], trace["series"]
        j = columns.index(timeline_column(series))
        style = colour.points(series)
        t = gpu["t"] - trace["start"]
        for i, (quantity, _) in enumerate(GPU_QUANTITIES):
            ax = axes[i][j]
            ax.plot(t, gpu[quantity], color=style["color"], alpha=0.18, linewidth=0.5, gid=style["gid"])
            mean = smoothed(t, gpu[quantity])
            ax.plot(t, mean, color=style["color"], linewidth=1.1, linestyle=colour.scenario_style(series),
                    gid=style["gid"])
            if quantity == "power_w" and runs_of[series] > 1:  # which line is which load
                last_fifth = mean[-max(1, len(mean) // 5):]
                ends.setdefault(j, []).append((float(np.nanmean(last_fifth)), trace["load"], style["color"]))
        memory = trace["memory"] if per_server else {"GPU": gpu["mem_used_mib"]}
        for k, name in enumerate(sorted(memory)):
            axes[-1][j].plot(t, memory[name] / 1024, color=style["color"], linewidth=1.1, gid=style["gid"],
                             linestyle=LINE_STYLES[k % len(LINE_STYLES)] if per_server else
                             colour.scenario_style(series))
    window = f"{SMOOTHING_S:g} s rolling mean"
    labels = [f"GPU {label}" for _, label in GPU_QUANTITIES] + [
        "memory per server (GiB)" if per_server else "GPU memory used (GiB)"]
    for j, column in enumerate(columns):
        title = column if column not in colour.modes else colour.name(column)  # a phase, or a scenario's mode
        axes[0][j].set_title(wrapped(title, max(10, 66 // len(columns))))
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time since first\nrequest (s)" if len(columns) > 2 else
                      "time since the first measured request (s)")
    for i, label in enumerate(labels):
        axes[i][0].set_ylabel(wrapped(label, 18))
    axes[0][0].set_ylim(-3, 103)
    if ends:
        power = next(i for i, (quantity, _) in enumerate(GPU_QUANTITIES) if quantity == "power_w")
        right = max(float(t["gpu"]["t"].iloc[-1] - t["start"]) for t in traces)
        axes[power][0].set_xlim(right=right * 1.12)
        low, high = axes[power][0].get_ylim()
        for j, found in ends.items():
            heights = spread_labels([y for y, _, _ in found], 0.09 * (high - low), low)
            for (_, text, shade), y in zip(found, heights):
                axes[power][j].annotate(text, (right * 1.015, y), fontsize=5.5, color=shade, va="center")
    handles, names = key(colour, [t["series"] for t in traces], phases=False)
    handles.append(Line2D([], [], color="dimgrey", alpha=0.35, linewidth=0.6))
    names.append(f"faint: raw samples (every {period:.1f} s)\nbold: {window}")
    if max(runs_of.values()) > 1:
        units = sorted({t["unit"] for t in traces})
        handles.append(Line2D([], [], linestyle="none"))
        names.append(f"at a power line's end: its run's load ({', '.join(units)})")
    if per_server:
        for k, names_at in sorted(by_place.items()):
            handles.append(Line2D([], [], color="dimgrey", linestyle=LINE_STYLES[k % len(LINE_STYLES)]))
            names.append(f"memory, {['1st', '2nd', '3rd'][k] if k < 3 else f'{k + 1}th'} server: "
                         + ", ".join(sorted(set(names_at))))
    else:
        names[-1] += "; memory: the GPU's (per-server not recorded)"
    figure_legend(fig, handles, names, where="bottom")
    return save(fig, out, "gpu_timeline")


PER_SERVER_FIELDS = ["output_throughput", "p99_latency_s"]


@styled
def plot_per_server(runs: pd.DataFrame, out: Path, colour: Look) -> list[Path]:
    """Each server's output throughput and P99 latency, for scenarios with several servers."""
    rows = []
    for _, run in runs[runs["servers"] > 1].iterrows():
        for server, block in read_run(Path(run["run"])).per_endpoint.items():
            rows.append({"label": f"{colour.name(run['scenario'])} @ {run['load']:g}: {server}",
                         "scenario": run["scenario"], **block.pick(PER_SERVER_FIELDS)})
    if not rows:
        return []
    bars = pd.DataFrame(rows)
    bars[PER_SERVER_FIELDS] = bars[PER_SERVER_FIELDS].apply(pd.to_numeric, errors="coerce")
    bars = bars.groupby(["label", "scenario"], sort=False).agg(["mean", "std"]).reset_index()
    fig, axes = subplots(2, 1, figsize=(PAGE_IN, 2.0 + 0.12 * len(bars) + 2.2), sharex=True)
    for ax, column in zip(axes, PER_SERVER_FIELDS):
        ax.bar(range(len(bars)), bars[(column, "mean")], yerr=_spread(bars[(column, "std")]), capsize=2,
               color=[colour[s] for s in bars["scenario"]], gid="bars")
        for patch, scenario in zip(ax.patches, bars["scenario"]):
            patch.set_gid(colour.mode(scenario))
        ax.set_ylabel(wrapped(METRICS[column].title, 20))
        ax.grid(alpha=0.3, axis="y")
    axes[-1].set_xticks(range(len(bars)), bars["label"], rotation=35, ha="right", rotation_mode="anchor")
    figure_legend(fig, *key(colour, bars["scenario"], phases=False, line=False))
    return save(fig, out, "per_server")


def figure_series(runs: pd.DataFrame) -> pd.Series:
    """What a figure draws as one series: the scenario, named with its GPU model where the runs
    span several, so that one scenario name run on two GPU models is two lines, never one."""
    if runs["gpu_model"].nunique() < 2:
        return runs["scenario"]
    return runs["scenario"] + " (" + runs["gpu_model"] + ")"
