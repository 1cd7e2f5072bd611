"""Run folders in; one tidy table of runs (a row per run, or per tenant of a run), its summary
per scenario, GPU model and load (mean, spread, runs), and the tables made of it: the summary
and, across GPU models, the like-for-like comparison. Figures are run_figures.py's; the
`analyze` command that writes both is analysis.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..core.files import CONFIG, REQUESTS, SUMMARY
from ..errors import ConfigError
from ..measure.metric_catalog import CATALOGUE, METRICS
from ..measure.results import (GpuWindow, MetricBlock, Summary, SummaryUnreadable, read_run,
                               read_run_config, read_verdict, run_location, workload_labels)
from .style import markdown


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
