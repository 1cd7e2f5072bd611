"""`gpushare run`: one scenario, one run folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from ..config import SLO_BOUNDS, parse_config
from ..config_file import apply_overrides, read_config_file
from ..errors import ConfigError
from .app import app, command_interrupts, err_console, note_late_signal


SLO_NAMES = (*SLO_BOUNDS, "attainment")


def parse_slos(items: list[str]) -> dict[str, float] | None:
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, eq, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        allowed = 0 < number <= 1 if name == "attainment" else 0 < number < math.inf
        if not eq or name not in SLO_NAMES or not allowed:
            raise ConfigError(
                f"--slo: expected NAME=SECONDS with NAME one of {', '.join(SLO_BOUNDS)} and SECONDS a finite number > 0, "
                f"or attainment=SHARE with SHARE in (0, 1] (got {item!r})"
            )
        out[name] = number
    return out


@app.command()
def run(
    ctx: typer.Context,
    config: Path = typer.Option(..., "--config", "-c", help="Scenario YAML (see configs/)."),
    concurrency: Optional[int] = typer.Option(None, help="Closed loop: requests in flight. With --request-rate: a cap."),
    n_requests: Optional[int] = typer.Option(None, "--n-requests", help="Measured requests (warm-up excluded)."),
    request_rate: Optional[float] = typer.Option(None, "--request-rate", help="Open loop: mean arrivals per second."),
    duration: Optional[float] = typer.Option(None, help="Stop sending after this many seconds."),
    out: Optional[Path] = typer.Option(None, help="Folder that receives the run folder (default: runs)."),
    seed: Optional[int] = typer.Option(None, help="Seed for prompts and arrival times."),
    slo: List[str] = typer.Option([], help="SLO for goodput, e.g. --slo ttft=0.5 --slo tpot=0.05 (seconds) [--slo attainment=0.99]."),
) -> None:
    """Start the scenario's servers, drive them, and write a run folder."""
    from ..experiment.run.run import run_scenario

    overrides = {
        "load.concurrency": concurrency,
        "load.n_requests": n_requests,
        "load.request_rate": request_rate,
        "load.duration_s": duration,
        "out": None if out is None else str(out),
        "seed": seed,
        "slo": parse_slos(slo),
    }
    raw = apply_overrides(read_config_file(config), overrides)
    load = raw.setdefault("load", {})
    if isinstance(load, dict):
        # A rate given alone means a pure open loop, a duration alone a time-bound run.
        if request_rate is not None and concurrency is None:
            load["concurrency"] = None
        if duration is not None and n_requests is None:
            load["n_requests"] = None
    flags = {key: "--" + key.split(".")[-1].removesuffix("_s").replace("_", "-")
             for key, value in overrides.items() if value is not None}
    parsed = parse_config(raw, flags)
    interrupts = command_interrupts(ctx)
    outcome = run_scenario(parsed, err_console, interrupts=interrupts)
    note_late_signal(interrupts, outcome.exit_code)
    if outcome.exit_code:
        err_console.print(f"error: {outcome.summary.error}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(outcome.exit_code)

