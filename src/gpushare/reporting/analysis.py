"""`gpushare analyze`: run folders in; the tidy table, the summary tables (CSV, Markdown,
LaTeX) and every figure out, with the isolation, capacity and plan reports where their files
lie among the runs. Tables are run_tables.py's, figures run_figures.py's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import ConfigError
from .capacity import find_capacity, read_capacity, write_capacity_report
from .isolation import find_interference, read_interference, write_isolation
from .plan import find_plans, read_plans, write_plan_report
from .run_figures import (figure_series, plot_cdfs, plot_gpu_timelines, plot_per_server, plot_token_lengths,
                          plot_tradeoff, plot_versus_load)
from .run_tables import RunSet, request_table, summarize_runs, write_cross_gpu, write_tables
from .style import look


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
