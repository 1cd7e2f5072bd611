"""`gpushare capacity`: the most load a tenant holds under its SLO, alone and beside its neighbours."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from .app import (FlagParser, app, check_executor_flags, command_interrupts, err_console, matrix_executor,
    matrix_executors, note_late_signal, positive, say_counts)

if TYPE_CHECKING:
    from ..measure.capacity_doc import CapacityDoc


def parse_capacity_args(args: list[str]) -> argparse.Namespace:
    parser = FlagParser("capacity")
    parser.add_argument("--configs", nargs="+", type=Path, required=True)
    parser.add_argument("--tenant", default=None)
    parser.add_argument("--beside", action="append", default=[])
    parser.add_argument("--target", nargs="+", type=float, default=None)
    for flag, kind in (("--window", float), ("--settle", float), ("--tolerance", float), ("--budget", int),
                       ("--start", float), ("--ceiling", float)):
        parser.add_argument(flag, type=kind, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/capacity"))
    parser.add_argument("--redo-changed", action="store_true")
    for executor in matrix_executors():
        executor.add_flags(parser)
    ns = parser.parse(args)
    positive(*((flag, [value]) for flag, value in (("--window", ns.window), ("--start", ns.start),
                                                   ("--ceiling", ns.ceiling)) if value is not None))
    if ns.settle is not None and not 0 <= ns.settle < math.inf:
        raise ConfigError("--settle: must be a finite number of seconds, 0 or more")
    if ns.target is not None and not all(0 < t < 1 for t in ns.target):
        raise ConfigError("--target: attainment targets must be in (0, 1): a target of 1 no finite window proves")
    if ns.tolerance is not None and not 0 < ns.tolerance < 1:
        raise ConfigError("--tolerance: a rate's bracket relative to its lower end, in (0, 1)")
    if ns.budget is not None and ns.budget < 2:
        raise ConfigError("--budget: probes per search, at least 2 (one each side of the capacity)")
    check_executor_flags(ns)
    return ns


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def capacity(ctx: typer.Context) -> None:
    """The most load a tenant holds under its SLO, alone and beside its neighbours, per scenario
    (one per sharing mode): its capacity, the highest level of its own load (request rate on an
    open loop, concurrency on a closed one) at which the share of its requests meeting every
    SLO bound reaches its attainment target (the SLO's `attainment`, default 0.99).

    gpushare capacity --configs A.yaml [B.yaml ...] --tenant NAME [--beside OTHER=L1,L2 ...]
      [--target 0.9 0.99] [--window S] [--settle S] [--tolerance R] [--budget N]
      [--start L] [--ceiling L] [--model M] [--out DIR] [--redo-changed] [--gpus ... | --ray ...]

    Per scenario the servers start once; the tenant is searched alone (its neighbours' servers
    up and idle), then beside each --beside level of a neighbour (default: every neighbour at
    its configured load), the capacity alone bounding those searches. A search doubles (or
    halves) from --start (default: the configured level) to bracket the capacity, then bisects
    to --tolerance (relative, for a rate; 1 for a concurrency), at most --budget probes each.
    Several --target values are searched at once, sharing probes.

    Each probe measures one window at one level and judges the tenant's attainment by a Wilson
    95 % interval: feasible when the interval is at or above the target, infeasible when below,
    unresolved when it straddles it; an unresolved level is probed again with a window twice,
    then four times as long, and reported unresolved if it still straddles. With every request
    good, the interval clears 0.99 only from 381 requests (0.9: 35), so an open-loop probe lasts
    at least 381 / rate seconds (and --window, default 20 s); a closed-loop probe lasts --window.
    Every probe first loads for --settle seconds (default 5) unmeasured. Above capacity an open
    loop's queue grows for as long as the window lasts, so a level just above capacity may pass
    a short window and fail a longer one: a verdict holds for the window it was measured over,
    which capacity.json records.

    Writes capacity.csv and capacity.json (a row per scenario, neighbour setting and target:
    capacity, first_infeasible, attainment with its Wilson bounds at both, the binding bound,
    probes, resolved, capacity_kept = beside / alone) and capacity_probes.csv; every probe is a
    run folder OUT/SCENARIO/PROBE, indexed in matrix.json. Ctrl-C keeps finished probes; a rerun
    with the same --out resumes, reusing them. --gpus and --ray spread scenarios as for matrix.
    """
    from ..experiment.capacity import parse_beside, plan_capacity, write_capacity
    from ..measure.capacity_doc import CAPACITY_CSV
    from ..experiment.matrix import run_plan
    from ..experiment.matrix_plan import load_scenarios

    ns = parse_capacity_args(list(ctx.args))
    flags = {"tenant": ns.tenant, "beside": parse_beside(ns.beside) or None, "targets": ns.target,
             "window_s": ns.window, "settle_s": ns.settle, "tolerance": ns.tolerance, "budget": ns.budget,
             "start": ns.start, "ceiling": ns.ceiling}
    plan = plan_capacity(load_scenarios(ns.configs, ns.model), flags)
    interrupts = command_interrupts(ctx)
    index, code = run_plan(plan, ns.out, err_console, interrupts, matrix_executor(ns, interrupts), ns.redo_changed)
    note_late_signal(interrupts, code)
    doc = write_capacity(plan, ns.out)
    print_capacity(doc)
    say_counts("capacity", "probe(s)", index, ns.out / CAPACITY_CSV)
    raise typer.Exit(code)


def print_capacity(doc: "CapacityDoc") -> None:
    """Per scenario and neighbour setting: the capacity, the level above it found infeasible,
    the attainment there with its interval, and the share of the capacity alone it kept; why
    a row is unresolved, under the table."""
    def num(value: float | None, fmt: str = "g") -> str:
        return "-" if value is None else format(value, fmt)

    tenants = ", ".join(dict.fromkeys(row.tenant for row in doc.rows))
    table = Table(title=f"capacity of {tenants} under its SLO")
    for column in ("scenario", "beside", "target", "capacity", "infeasible", "attained [95% CI]", "binds", "kept"):
        table.add_column(column, justify="left" if column in ("scenario", "beside", "binds") else "right")
    unresolved = []
    for row in doc.rows:
        low, high = row.wilson_low_at_capacity, row.wilson_high_at_capacity
        at = "-" if row.attainment_at_capacity is None else f"{row.attainment_at_capacity:.3f} [{low:.3f}, {high:.3f}]"
        mark = "" if row.resolved else " *"
        table.add_row(row.scenario, row.beside or "alone", f"{row.target:g}", num(row.capacity) + mark,
                      num(row.first_infeasible), at, row.binding or "-", num(row.capacity_kept, ".2f"))
        if not row.resolved:
            unresolved.append(f"* {row.scenario} {row.beside or 'alone'} {row.target:g}: {row.why} "
                              f"({row.probes} probes)")
    Console().print(table)
    for line in unresolved:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)

