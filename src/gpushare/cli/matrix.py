"""`gpushare matrix`: every scenario at every load level, on this machine, its GPUs or a Ray cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

import typer

from ..errors import ConfigError
from .app import (FlagParser, app, check_executor_flags, command_interrupts, err_console, matrix_executor,
    matrix_executors, note_late_signal, positive)


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
    from ..experiment.matrix import run_matrix
    from ..experiment.matrix_plan import load_scenarios

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

