"""`gpushare plan`: the fewest GPUs that hold every tenant's SLO, proven by measured runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..errors import ConfigError
from .app import (FlagParser, app, check_executor_flags, command_interrupts, err_console, matrix_executor,
    matrix_executors, note_late_signal)


def parse_plan_args(args: list[str]) -> argparse.Namespace:
    parser = FlagParser("plan")
    parser.add_argument("plan_file", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--margin", type=float, default=None)
    parser.add_argument("--redo-changed", action="store_true")
    for executor in matrix_executors():
        executor.add_flags(parser)
    ns = parser.parse(args)
    if ns.margin is not None and not 0 <= ns.margin < 1:
        raise ConfigError(f"--margin: must be in [0, 1) (a share of each capacity held back), not {ns.margin:g}")
    check_executor_flags(ns)
    return ns


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def plan(ctx: typer.Context) -> None:
    """The fewest GPUs that hold every tenant's target under its SLO, proven by measured runs.

    gpushare plan PLAN.yaml [--out DIR] [--store DIR] [--margin M] [--redo-changed] [--gpus ... | --ray ...]

    PLAN.yaml (docs/plan.md) names the tenants (served model, workload, target load, SLO with
    its attainment), the fleet (GPU models, counts, the placements each allows: engine,
    timeslice, mps, mig_emulation, mig) and the margin held back from every capacity. Three
    stages, each resumable (Ctrl-C, then the same command again).

    Profile: each capacity the packing needs that the profile store (--store, default
    OUT/profiles, reused across plans) lacks is measured by a capacity search: every tenant
    alone on a whole GPU (and in each slice), then each pair that could share a GPU, each
    beside the other at its target.

    Search: the packing with the fewest GPUs, then the most headroom (an exact MILP where the
    groups are few enough, else a heuristic with a stated lower bound), under the model in
    docs/plan.md: on a shared GPU each neighbour takes from a tenant's capacity what it took in
    their pair's measurement.

    Prove: each GPU of the packing runs its tenants together at their targets for the proof
    window; it is proven when each meets its attainment target. A refuted group goes into the
    store and the packing is searched again.

    Writes OUT/plan.json and OUT/plan.md (default OUT: runs/plan/PLAN): GPUs used against the
    dedicated baseline (one per tenant) and the lower bound; per GPU its tenants, placement,
    slices, capacity, headroom and proof run with the measured attainment. A tenant that fits
    nowhere is one line naming it, exit 2, and no plan. --gpus and --ray run each stage's
    scenarios side by side as for matrix.
    """
    from ..experiment.matrix import run_plan
    from ..experiment.planner import PlanStopped, make_plan, write_plan
    from ..measure.plan_doc import StoreUnreadable
    from ..plan_config import read_plan

    ns = parse_plan_args(list(ctx.args))
    config = read_plan(ns.plan_file)
    updates = {k: v for k, v in (("margin", ns.margin), ("store", ns.store)) if v is not None}
    config = config.model_copy(update=updates)
    out = ns.out or Path("runs/plan") / config.plan
    interrupts = command_interrupts(ctx)
    executor = matrix_executor(ns, interrupts)

    def run_stage(scenarios: list[Any], folder: Path) -> int:
        index, code = run_plan(scenarios, folder, err_console, interrupts, executor, ns.redo_changed)
        note_late_signal(interrupts, code)
        return code

    def say(line: str) -> None:
        err_console.print(f"plan: {line}", markup=False, highlight=False, soft_wrap=True)

    try:
        result = make_plan(config, out, run_stage, say)
    except StoreUnreadable as err:
        raise ConfigError(f"--store: {err}") from None
    except PlanStopped as stopped:
        say(str(stopped))
        raise typer.Exit(stopped.code) from None
    write_plan(out, result)
    Console().print(result.markdown, markup=False, highlight=False, soft_wrap=True)
    say(f"{result.doc.status}: {result.doc.gpus_used} GPU(s) against {result.doc.dedicated} dedicated; "
        f"{out / 'plan.json'}")
    raise typer.Exit(0 if result.doc.status == "proven" else 1)

