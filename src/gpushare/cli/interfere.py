"""`gpushare interfere`: each tenant alone, then all together, per sharing mode."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from .app import FlagParser, app, command_interrupts, err_console, note_late_signal, say_counts

if TYPE_CHECKING:
    from ..measure.interference_doc import InterferenceDoc


def parse_interfere_args(args: list[str]) -> argparse.Namespace:
    parser = FlagParser("interfere")
    parser.add_argument("--configs", nargs="+", type=Path, required=True)
    parser.add_argument("--dedicated", type=Path, default=None)
    parser.add_argument("--capacity", type=Path, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/interference"))
    parser.add_argument("--redo-changed", action="store_true")
    return parser.parse(args)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def interfere(ctx: typer.Context) -> None:
    """How much each tenant loses to its neighbours: per scenario (one per sharing mode), the
    servers start once, then each tenant runs alone (the others' servers up and idle), then all
    together, every phase for the same window. Each tenant is scored on what the GPU gave it
    (closed loop: output tok/s; open loop with an SLO: its good requests per second of its
    window, or with --capacity DIR the capacity it kept beside its neighbours at their loads
    here, from `gpushare capacity --out DIR`; open loop without one: not scored), and
    fairness and STP are taken over those. --dedicated BASELINE.yaml (a scenario
    with the same tenants) also runs each tenant alone with only its own servers from that
    config, and states every tenant's share against that reference too. Writes interference.csv
    (solo, shared and slowdown per tenant and metric), interference_tenants.csv (each tenant's
    score), interference_scores.csv (fairness, STP, the output tok/s over the interval every
    tenant loaded), interference_levels.csv (a victim per loaded level of its aggressor) and
    interference.json; each phase is a run folder, indexed in matrix.json. A rerun with the
    same --out skips complete phases measured under the settings planned now, and refuses when
    a complete phase was measured under other settings, unless --redo-changed (earlier attempts
    are kept beside their phase, as for matrix).

    gpushare interfere --configs A.yaml [B.yaml ...] [--dedicated BASELINE.yaml] [--capacity DIR] [--model M]
    [--out DIR] [--redo-changed]
    """
    from ..core.files import INTERFERENCE_CSV
    from ..experiment.interference_protocol import plan_interference, read_dedicated, write_interference
    from ..experiment.matrix import run_plan
    from ..experiment.matrix_plan import load_scenarios

    ns = parse_interfere_args(list(ctx.args))
    configs = load_scenarios(ns.configs, ns.model)
    plan = plan_interference(configs, None if ns.dedicated is None else read_dedicated(ns.dedicated, ns.model))
    interrupts = command_interrupts(ctx)
    index, code = run_plan(plan.plans, ns.out, err_console, interrupts, redo_changed=ns.redo_changed)
    note_late_signal(interrupts, code)
    doc = write_interference(plan, ns.out, None if ns.capacity is None else capacity_kept(ns.capacity, configs))
    print_interference(doc)
    say_counts("interfere", "phase(s)", index, ns.out / INTERFERENCE_CSV)
    raise typer.Exit(code)


def capacity_kept(folder: Path, configs: list[Any]) -> dict[str, dict[str, float]]:
    """--capacity DIR: per scenario, each open-loop tenant's capacity kept from DIR/capacity.json."""
    from ..experiment.capacity import kept_beside_configured
    from ..measure.capacity_doc import CapacityUnreadable, read_capacity_doc

    try:
        doc = read_capacity_doc(folder)
    except CapacityUnreadable as err:
        raise ConfigError(f"--capacity: {err}") from None
    if doc is None:
        raise ConfigError(f"--capacity: {folder} holds no capacity.json (gpushare capacity --out {folder} writes it)")
    return {config.scenario: kept_beside_configured(doc, config) for config in configs}


def print_interference(doc: InterferenceDoc) -> None:
    """Per scenario and tenant: P99 TTFT and TPOT shared / solo (a victim's at its aggressor's
    worst loaded level), the share it kept of the quantity it is scored on (and against its
    dedicated reference), fairness, STP and the output tok/s while every tenant loaded."""
    from ..measure.metric_catalog import METRICS

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    latencies = [METRICS[key] for key in ("p99_ttft_ms", "p99_tpot_ms")]
    table = Table(title="interference: shared / solo per tenant (latency above 1 is worse, kept below 1; "
                        "@N: a victim's worst loaded level of its aggressor)")
    columns = ("scenario", "tenant", *(m.label for m in latencies), "kept (scored on)", "kept vs dedicated",
               "fairness", "STP", "tok/s, all loading")
    for column in columns:
        table.add_column(column, justify="left" if column in ("scenario", "tenant") else "right",
                         no_wrap=column == "scenario")
    for name, entry in doc.scenarios.items():
        if entry.scores is None:
            table.add_row(name, "-", entry.error, *[""] * (len(columns) - 3))
            continue
        whole = {(row.tenant, row.metric): row.slowdown for row in entry.tenants}
        worst = {(tenant, row.metric): row for tenant, rows in entry.levels.items() for row in rows if row.worst}
        scores, common = entry.scores, entry.aggregate
        for i, (tenant, score) in enumerate(scores.scored.items()):
            def latency(key: str) -> str:
                level = worst.get((tenant, key))
                if level is None:
                    return num(whole.get((tenant, key)), ".2f")
                return f"{num(level.slowdown, '.2f')} @{level.level:g}"

            first = i == 0
            table.add_row(name if first else "", tenant, *(latency(m.key) for m in latencies),
                          "not scored" if score.scored_on is None else f"{num(score.kept, '.2f')} {score.scored_on}",
                          num(score.kept_vs_dedicated, ".2f"), num(scores.fairness, ".2f") if first else "",
                          num(scores.stp, ".2f") if first else "",
                          (num(None if common is None else common.output_throughput, ",.0f")) if first else "")
    Console().print(table)

