"""What a run says on the console: plain lines, live progress, and the summary table, whose
labels and units are the metric catalogue's."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ...core.events import Event, RequestFinished
from ...measure.metric_catalog import METRICS
from ...measure.results import Summary

LATENCIES = ("ttft", "tpot", "itl", "e2el")
LATENCY_STATS = ("mean", "p50", "p99")


def say(console: Console, message: str) -> None:
    """One plain line; a terminal that has gone (SIGHUP) must not stop the clean-up."""
    try:
        console.print(message, soft_wrap=True, highlight=False, markup=False)
    except OSError:
        pass


def ms_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def titles(*keys: str) -> str:
    """The catalogue's labels of these keys, one after another, with their unit once where they share one."""
    specs = [METRICS[key] for key in keys]
    if len({spec.unit for spec in specs}) == 1 and specs[0].unit:
        return f"{' / '.join(spec.label for spec in specs)} ({specs[0].unit})"
    return " / ".join(spec.title for spec in specs)


def print_summary(console: Console, summary: Summary, run_dir: Path) -> None:
    table = Table(title=f"{summary.scenario} ({'complete' if summary.complete else 'INCOMPLETE'})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(titles("completed", "failed"), f"{summary.completed} / {summary.failed}")
    table.add_row(titles("duration"), f"{summary.duration:.2f}")
    table.add_row(titles("request_throughput"), f"{summary.request_throughput:.2f}")
    table.add_row(titles("output_throughput"), f"{summary.output_throughput:,.1f}")
    table.add_row(titles("total_token_throughput"), f"{summary.total_token_throughput:,.1f}")
    for name in LATENCIES:
        keys = [f"{stat}_{name}_ms" for stat in LATENCY_STATS]
        table.add_row(titles(*keys), " / ".join(map(ms_or_dash, summary.pick(keys).values())))
    gpu = summary.gpu
    if gpu is not None and gpu.energy_j is not None:
        table.add_row(titles("energy_j", "energy_per_output_token_j"),
                      f"{gpu.energy_j:,.0f} / {gpu.energy_per_output_token_j:.3f}")
        table.add_row(titles("avg_power_w", "max_power_w"), f"{gpu.avg_power_w:.0f} / {gpu.max_power_w or 0:.0f}")
    if summary.request_goodput is not None:  # only with SLOs
        table.add_row(titles("request_goodput", "good_request_fraction"),
                      f"{summary.request_goodput:.2f} / {summary.good_request_fraction or 0:.2%}")
    tenant_row = titles("completed", "failed", "output_throughput", "p99_ttft_ms", "good_request_fraction")
    for name, block in (summary.tenants or {}).items():
        met = block.good_request_fraction
        table.add_row(f"tenant {name}: {tenant_row}",
                      f"{block.completed} / {block.failed} / {block.output_throughput:,.1f} / "
                      f"{ms_or_dash(block.p99_ttft_ms)} / {'-' if met is None else f'{met:.0%}'}")
    if summary.completed or summary.failed:
        console.print(table)
    state = "" if summary.complete else " (incomplete)"
    console.print(f"Run folder: {run_dir}{state}", soft_wrap=True, highlight=False)


class LiveProgress:
    """Requests done / failed and the output throughput, on a terminal only."""

    def __init__(self, console: Console, total: int | None):
        self.enabled = console.is_terminal
        self.tokens = 0
        self.failed = 0
        self.began: float | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"),
            TextColumn(f"{{task.fields[rate]}} {METRICS['output_throughput'].unit}"),
            TimeElapsedColumn(), console=console, transient=True,
        )
        self.task = self.progress.add_task("requests", total=total, failed=0, rate="0")

    def __call__(self, event: Event) -> None:
        if not self.enabled or not isinstance(event, RequestFinished) or event.record.warmup:
            return
        rec = event.record
        self.began = self.began or rec.sent
        self.tokens += rec.output_tokens or 0
        self.failed += not rec.ok
        elapsed = max(1e-9, time.perf_counter() - self.began)
        self.progress.update(self.task, advance=1, failed=self.failed, rate=f"{self.tokens / elapsed:,.0f}")

    def __enter__(self) -> "LiveProgress":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()
