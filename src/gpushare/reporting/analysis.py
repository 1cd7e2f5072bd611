"""Run folders in; one tidy table, summary tables (CSV, Markdown, LaTeX) and figures out.

Every figure colours a series by its sharing mode (style.Look: the same mode reads the same
in every figure), labels its axes with units, and shows the spread of repeated runs (error
bars: one standard deviation), not only their mean. A tenant's phases (alone, shared) are
panels and markers of their own, never loads of one line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ..core.files import CONFIG, GPU_SAMPLES, REQUESTS, SUMMARY
from ..errors import ConfigError
from ..measure.metric_catalog import CATALOGUE, METRICS
from ..measure.metrics import process_memory
from ..measure.results import (GpuWindow, MetricBlock, Summary, SummaryUnreadable, read_run,
                               read_run_config, read_verdict, run_location, workload_labels)
from .capacity import find_capacity, read_capacity, write_capacity_report
from .isolation import find_interference, read_interference, write_isolation
from .plan import find_plans, read_plans, write_plan_report
from .style import (ALONE, LINE_STYLES, PAGE_IN, SHARED, SMOOTHING_S, Look, base_scenario, common_prefix,
                    figure_legend, key, loaded_tenants, look, markdown, phase_of, save, styled, subplots,
                    width_for, wrapped)

# Per run: what identifies it, what it measured (summary.json keys), and the gpu block's keys;
# metric_catalog says what each key means.
RUN_FIELDS = ["scenario", "sharing_mode", "load_mode", "max_concurrency", "request_rate", "complete"]
METRIC_FIELDS = [
    "completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
    "p50_latency_s", "p95_latency_s", "p99_latency_s", "p99_ttft_ms", "p99_tpot_ms", "mean_tpot_ms", "p99_itl_ms",
]
GPU_FIELDS = ["energy_per_output_token_j", "avg_power_w", "mean_gpu_util_pct", "max_mem_used_mib"]
LOCATION_FIELDS = ["gpu_model", "node"]
UNKNOWN = "unknown"
"""A run's GPU model and node where its folder does not say (results.run_location gave None),
and its workload where its summary does not (recorded before summaries said)."""

# The summary table's metric columns: those the catalogue marks with their decimals.
TABLE_METRICS = tuple(m for m in CATALOGUE if m.table is not None)


def is_run_folder(folder: Path) -> bool:
    """A summary.json, or what a run killed before it wrote one leaves: its config and requests."""
    return (folder / SUMMARY).exists() or ((folder / CONFIG).exists() and (folder / REQUESTS).exists())


def run_folders(paths: Iterable[Path]) -> list[Path]:
    """Every run folder, finished or not, under or at the given paths."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"--runs: {path} does not exist")
        if is_run_folder(path):
            found.add(path)
        else:
            found.update(filter(is_run_folder, {p.parent for name in (SUMMARY, REQUESTS)
                                                for p in path.rglob(name)}))
    if not found:
        raise ConfigError(f"--runs: no run folders (with summary.json, or config.yaml and requests.csv) under "
                          f"{', '.join(map(str, paths))}")
    return sorted(found)


def prefix_cache_hits(summary: Summary) -> float | None:
    """Prompt tokens the servers answered from their prefix cache during the window; None
    where no server counted them. Non-zero means some prompts skipped their prefill."""
    counted = [c["prefix_cache_hits"] for c in summary.server_counters.values() if c and "prefix_cache_hits" in c]
    return sum(counted) if counted else None


LOAD_UNITS = {"request_rate": "req/s", "max_concurrency": "in flight"}
"""What a run's load counts: its requests per second sent (open loop, or steps of rates) or
the requests it keeps in flight."""


def _row(folder: Path, identity: dict, metrics: MetricBlock, rest: dict) -> dict:
    """A row: `identity` (RUN_FIELDS), the metrics' METRIC_FIELDS, and `rest`. A metric the
    summary lacks (every request failed, no GPU) is left empty; a row without its load is
    unreadable."""
    row = {**identity, **metrics.pick(METRIC_FIELDS), **rest, "run": str(folder)}
    rate_led = row["load_mode"] == "open_loop" or (row["load_mode"] == "steps" and row["request_rate"])
    load_key = "request_rate" if rate_led else "max_concurrency"
    row["load"] = row[load_key]
    row["load_unit"] = LOAD_UNITS[load_key]
    if row["load"] is None:
        raise SummaryUnreadable(f"{folder / SUMMARY}: lacks {load_key}")
    return row


def location_fields(folder: Path, summary: Summary) -> dict:
    """The GPU model and node a run measured on: runs of different GPU models are never
    averaged together."""
    location = run_location(folder, summary)
    if location is None:
        return dict.fromkeys(LOCATION_FIELDS, UNKNOWN)
    return {"gpu_model": location.gpu_model, "node": location.node}


def run_row(folder: Path, summary: Summary) -> dict:
    """One complete run's row."""
    return _row(folder, summary.pick(RUN_FIELDS), summary, {
        **(summary.gpu or GpuWindow()).pick(GPU_FIELDS), "prefix_cache_hit_tokens": prefix_cache_hits(summary),
        "tenant": None, "servers": len(summary.per_endpoint), **location_fields(folder, summary),
        "workload": workload_labels(read_run_config(folder)).get(None, UNKNOWN)})


def run_rows(folder: Path, summary: Summary) -> list[dict]:
    """A run's rows: one, or for a run of several tenants one per tenant, as a scenario of its
    own (`scenario[tenants that loaded]:tenant`, so a tenant alone and shared are not averaged
    together), from the tenant's block and the load it was offered. A tenant row has no GPU
    figures: the GPU served them all."""
    if not summary.tenants:
        return [run_row(folder, summary)]
    loaded = "+".join(summary.tenants)
    location = location_fields(folder, summary)
    workloads = workload_labels(read_run_config(folder))
    return [_row(folder, {"scenario": f"{summary.scenario}[{loaded}]:{name}", "sharing_mode": summary.sharing_mode,
                          "complete": summary.complete, **block.load.summary_fields()}, block,
                 {**dict.fromkeys(GPU_FIELDS), "prefix_cache_hit_tokens": None, "tenant": name,
                  "servers": len(set(block.servers)), **location, "workload": workloads.get(name, UNKNOWN)})
            for name, block in summary.tenants.items()]


@dataclass(frozen=True)
class RunSet:
    """The complete runs found, one row each, and every other run folder with why it was left out;
    `paths` are the folders searched, where `interfere`'s outputs may also lie."""

    runs: pd.DataFrame
    left_out: list[tuple[Path, str]]
    paths: tuple[Path, ...] = ()

    def notes(self) -> list[str]:
        """One line per folder left out, for the user: never leave a run out silently."""
        return [f"note: left out {folder}: {reason}" for folder, reason in self.left_out]

    def complete_runs(self) -> pd.DataFrame:
        if self.runs.empty:
            raise ConfigError(f"--runs: no complete runs to analyse ({len(self.left_out)} run folder(s) left out)")
        return self.runs


def read_runs(paths: Iterable[Path]) -> RunSet:
    """Every run folder under the paths: complete ones become rows, the rest are left out with
    their verdict's reason (not finished, failed, summary.json unreadable)."""
    paths = tuple(map(Path, paths))
    rows: list[dict] = []
    left_out: list[tuple[Path, str]] = []
    for folder in run_folders(paths):
        verdict = read_verdict(folder)
        if not verdict.complete:
            left_out.append((folder, verdict.reason))
            continue
        try:
            rows.extend(run_rows(folder, read_run(folder)))
        except SummaryUnreadable as err:
            left_out.append((folder, str(err)))
    numeric = METRIC_FIELDS + GPU_FIELDS + ["prefix_cache_hit_tokens"]
    runs = pd.DataFrame(rows, columns=[*RUN_FIELDS, *METRIC_FIELDS, *GPU_FIELDS, "prefix_cache_hit_tokens",
                                       "run", "tenant", "servers", "load", "load_unit", *LOCATION_FIELDS,
                                       "workload"])
    runs[numeric] = runs[numeric].apply(pd.to_numeric, errors="coerce")
    return RunSet(runs.sort_values(["scenario", "load", "run"]).reset_index(drop=True), left_out, paths)


def summarize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation per (scenario, GPU model, load), with the number of runs: a
    scenario name run on two GPU models is two rows, never one average."""
    numeric = [c for c in runs.columns if c not in ("scenario", "load", "run", "sharing_mode", "load_mode", "complete")
               and pd.api.types.is_numeric_dtype(runs[c])]
    grouped = runs.groupby(["scenario", "gpu_model", "load"], sort=True)
    mean = grouped[numeric].mean()
    std = grouped[numeric].std(ddof=1).add_suffix("_std")
    out = pd.concat([mean, std], axis=1)
    out["load_unit"] = grouped["load_unit"].first()
    out["failed"] = grouped["failed"].sum()
    out["prefix_cache_hit_tokens"] = grouped["prefix_cache_hit_tokens"].sum(min_count=1)
    out["runs"] = grouped.size()
    return out.reset_index()


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary for reading; a GPU column only where the runs span several GPU models."""
    out = pd.DataFrame({"Scenario": summary["scenario"]})
    if summary["gpu_model"].nunique() > 1:
        out["GPU"] = summary["gpu_model"]
    out["Load"] = [f"{load:g} {unit}" for load, unit in zip(summary["load"], summary["load_unit"])]
    for m in TABLE_METRICS:
        out[m.title] = summary[m.key].map(lambda v, d=m.table: "" if pd.isna(v) else f"{v:,.{d}f}")
    out["Runs"] = summary["runs"]
    return out


def write_tables(summary: pd.DataFrame, out: Path) -> list[Path]:
    shown = table(summary)
    paths = [out / "summary.csv", out / "summary.md", out / "summary.tex"]
    summary.to_csv(paths[0], index=False)
    paths[1].write_text(markdown(shown))
    paths[2].write_text(shown.to_latex(index=False, escape=True, column_format="l" + "r" * (len(shown.columns) - 1)))
    return paths


# --- across GPU models -------------------------------------------------------------------------

CROSS_GPU_KEYS = ["sharing_mode", "workload", "load_mode", "load"]
CROSS_GPU_METRICS = ["output_throughput", "p99_ttft_ms", "p99_tpot_ms"]
RATIO = " / "


def cross_gpu_table(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Per sharing mode, workload and load: each GPU model's mean output throughput, P99 TTFT
    and P99 TPOT, its mean measurement window (`duration`), runs and the scenarios that measured
    it, then each later model's ratio to the first (models sorted by name). Columns are (model
    or "later / first", field). Rows go by sharing mode because each GPU's scenarios carry its
    own name, and by workload because only the same requests compare (runs of two workloads
    under one mode are two rows, never one average); the scenarios are named so that a cell
    averaging two of one model's scenarios shows it. Whole runs only: a tenant's figures are its
    share of the GPU, not what the GPU did. None where fewer than two models ran whole runs:
    nothing to compare."""
    whole = runs[runs["tenant"].isna()]
    models = sorted(whole["gpu_model"].unique())
    if len(models) < 2:
        return None
    grouped = whole.groupby([*CROSS_GPU_KEYS, "gpu_model"])
    per_model = grouped[[*CROSS_GPU_METRICS, "duration"]].mean()
    per_model["runs"] = grouped.size()
    per_model["scenarios"] = grouped["scenario"].agg(lambda names: ", ".join(sorted(set(names))))
    wide = per_model.unstack("gpu_model")
    columns = {(model, field): wide[(field, model)] for model in models
               for field in ("scenarios", *CROSS_GPU_METRICS, "duration", "runs")}
    first = models[0]
    columns |= {(f"{model}{RATIO}{first}", key): wide[(key, model)] / wide[(key, first)]
                for model in models[1:] for key in CROSS_GPU_METRICS}
    return pd.DataFrame(columns)


def _rounded(values: pd.Series, decimals: int) -> pd.Series:
    return values.map(lambda v: "" if pd.isna(v) else f"{v:,.{decimals}f}")


def cross_gpu_shown(cross: pd.DataFrame) -> pd.DataFrame:
    """The cross-GPU table for reading: rounded and titled (a ratio without a unit); the runs
    are left to the CSV."""
    rows = cross.index.to_frame(index=False)
    out = {("", "Sharing mode"): rows["sharing_mode"], ("", "Workload"): rows["workload"],
           ("", "Load"): [f"{load:g} ({mode})" for mode, load in zip(rows["load_mode"], rows["load"])]}
    for group, field in cross.columns:
        values = cross[(group, field)].reset_index(drop=True)
        if field == "scenarios":
            out[(group, "Scenarios")] = values.fillna("")
        elif field == "duration":
            out[(group, "Window (s)")] = _rounded(values, 0)
        elif field in CROSS_GPU_METRICS and RATIO in group:
            out[(group, METRICS[field].label)] = _rounded(values, 2)
        elif field in CROSS_GPU_METRICS:
            out[(group, METRICS[field].title)] = _rounded(values, METRICS[field].table)
    return pd.DataFrame(out)


def write_cross_gpu(runs: pd.DataFrame, out: Path) -> list[Path]:
    """cross_gpu.csv, .md and .tex where the runs span several GPU models; nothing otherwise."""
    cross = cross_gpu_table(runs)
    if cross is None:
        return []
    paths = [out / "cross_gpu.csv", out / "cross_gpu.md", out / "cross_gpu.tex"]
    flat = cross.set_axis([f"{group} {field}" for group, field in cross.columns], axis=1)
    flat.reset_index().to_csv(paths[0], index=False)
    shown = cross_gpu_shown(cross)
    paths[1].write_text(markdown(shown.set_axis([f"{g}: {t}" if g else t for g, t in shown.columns], axis=1)))
    text = ("Sharing mode", "Workload", "Load", "Scenarios")
    paths[2].write_text(shown.to_latex(index=False, escape=True, multicolumn_format="c",
                                       column_format="".join("l" if t in text else "r" for _, t in shown.columns)))
    return paths


# --- figures -----------------------------------------------------------------------------------


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
        prefix = common_prefix([colour.name(b) for b in bases])
        chars = max(6, int((ax.figure.get_figwidth() / len(ax.figure.axes) - 0.5) / len(bases) / 0.055))
        ax.set_xticks(range(len(bases)), [wrapped(colour.name(b).removeprefix(prefix), chars) for b in bases])
        for tick, base in zip(ax.get_xticklabels(), bases):
            tick.set_color(colour[base])
        ax.set_xlim(-0.6, len(bases) - 0.4)
        ax.set_xlabel(f"scenario ({prefix}…)" if prefix else "scenario")
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


def request_table(runs: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for _, run in runs.iterrows():
        requests = pd.read_csv(Path(run["run"]) / REQUESTS)
        measured = requests["in_window"] == 1 if "in_window" in requests else requests["warmup"] == 0
        if isinstance(run["tenant"], str):
            measured &= requests["tenant"] == run["tenant"]
        requests = requests[measured & (requests["status"] == "ok")]
        frames.append(requests.assign(scenario=run["scenario"], load=run["load"], run=run["run"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
    axes. Utilisation and power are drawn as a SMOOTHING_S rolling mean over the faint raw
    samples; memory per server where gpu.csv's processes match the servers, else the GPU's."""
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
        traces.append({"series": run["scenario"], "gpu": gpu, "start": start, "memory": server_memory(gpu, folder)})
    if not traces:
        return []
    order = sorted(traces, key=lambda t: (phase_of(t["series"]) == SHARED, timeline_column(t["series"])))
    columns = list(dict.fromkeys(timeline_column(t["series"]) for t in order))
    per_server = all(t["memory"] for t in traces)
    by_place: dict[int, list[str]] = {}  # a run's servers in name order: its first solid, its second dashed, ...
    for trace in traces:
        for k, name in enumerate(sorted(trace["memory"])):
            by_place.setdefault(k, []).append(name)
    period = float(np.nanmedian(np.concatenate([np.diff(t["gpu"]["t"].to_numpy()) for t in traces])))
    fig, axes = subplots(len(GPU_QUANTITIES) + 1, len(columns), figsize=(width_for(len(columns)), 4.6),
                         sharex=True, sharey="row", squeeze=False)
    for trace in traces:
        gpu, series = trace["gpu"], trace["series"]
        j = columns.index(timeline_column(series))
        style = colour.points(series)
        t = gpu["t"] - trace["start"]
        for i, (quantity, _) in enumerate(GPU_QUANTITIES):
            ax = axes[i][j]
            ax.plot(t, gpu[quantity], color=style["color"], alpha=0.18, linewidth=0.5, gid=style["gid"])
            ax.plot(t, smoothed(t, gpu[quantity]), color=style["color"], linewidth=1.1,
                    linestyle=colour.scenario_style(series), gid=style["gid"])
        memory = trace["memory"] if per_server else {"GPU": gpu["mem_used_mib"]}
        for k, name in enumerate(sorted(memory)):
            axes[-1][j].plot(t, memory[name] / 1024, color=style["color"], linewidth=1.1, gid=style["gid"],
                             linestyle=LINE_STYLES[k % len(LINE_STYLES)] if per_server else
                             colour.scenario_style(series))
    window = f"{SMOOTHING_S:g} s rolling mean"
    labels = [f"GPU {label}" for _, label in GPU_QUANTITIES] + [
        "memory per server (GiB)" if per_server else "GPU memory used (GiB)"]
    for j, column in enumerate(columns):
        axes[0][j].set_title(wrapped(column, max(10, 66 // len(columns))))
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time since first\nrequest (s)" if len(columns) > 2 else
                      "time since the first measured request (s)")
    for i, label in enumerate(labels):
        axes[i][0].set_ylabel(wrapped(label, 18))
    axes[0][0].set_ylim(-3, 103)
    handles, names = key(colour, [t["series"] for t in traces], phases=False)
    handles.append(Line2D([], [], color="dimgrey", alpha=0.35, linewidth=0.6))
    names.append(f"faint: raw samples (every {period:.1f} s)\nbold: {window}")
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
            rows.append({"label": f"{run['scenario']} @ {run['load']:g}: {server}", "scenario": run["scenario"],
                         **block.pick(PER_SERVER_FIELDS)})
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


def writable_folder(out: Path) -> None:
    """Create `out` and write a file in it now, so an unusable --out is one line before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except FileExistsError:
        raise ConfigError(f"--out: cannot write to {out}: it exists and is not a folder") from None
    except OSError as err:
        raise ConfigError(f"--out: cannot write to {out}: {err.strerror or err}") from None


def figure_series(runs: pd.DataFrame) -> pd.Series:
    """What a figure draws as one series: the scenario, named with its GPU model where the runs
    span several, so that one scenario name run on two GPU models is two lines, never one."""
    if runs["gpu_model"].nunique() < 2:
        return runs["scenario"]
    return runs["scenario"] + " (" + runs["gpu_model"] + ")"


def analyze(found: RunSet, out: Path) -> list[Path]:
    """Write the tidy table, the summary tables and every figure from the complete runs; return
    what was written. With no complete run, nothing is written. Where the runs span several GPU
    models, the cross-GPU table comes too, and where `interfere`'s, `capacity`'s or `plan`'s
    outputs lie under the searched folders, their isolation, capacity or plan table and figures."""
    runs = found.complete_runs()
    writable_folder(out)
    runs.to_csv(out / "runs.csv", index=False)
    written = [out / "runs.csv", *write_tables(summarize_runs(runs), out), *write_cross_gpu(runs, out)]
    drawn = runs.assign(scenario=figure_series(runs))
    summary = summarize_runs(drawn)
    isolation = read_interference(find_interference(found.paths))
    colour = look(drawn, isolation.scores)
    written += plot_versus_load(summary, drawn, "output_throughput", "throughput_tokens_per_s", out, colour)
    written += plot_versus_load(summary, drawn, "p99_latency_s", "p99_latency_s", out, colour)
    written += plot_tradeoff(summary, out, colour)
    requests = request_table(drawn)
    written += plot_cdfs(requests, drawn, out, colour)
    written += plot_token_lengths(requests, out, colour)
    written += plot_gpu_timelines(drawn, out, colour)
    written += plot_per_server(drawn, out, colour)
    written += write_isolation(isolation, out, colour)
    written += write_capacity_report(read_capacity(find_capacity(found.paths)), out)
    written += write_plan_report(read_plans(find_plans(found.paths)), out)
    return written
