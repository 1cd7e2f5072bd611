"""The command line's shared parts: the typer app the commands register on, the error
console, the flag parser of the commands that take lists, and the lines every sweep prints."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from ..errors import ConfigError
from ..interrupts import Interrupts
from ..registry import Registry, import_modules

if TYPE_CHECKING:
    from ..experiment.matrix import Executor
    from ..measure.results import MatrixIndex


app = typer.Typer(
    help="Measure LLM serving on a shared GPU: start real OpenAI-compatible servers, drive them, record everything.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


model_app = typer.Typer(help="The embedded default model.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(model_app, name="model")


err_console = Console(stderr=True)


def command_interrupts(ctx: typer.Context) -> Interrupts:
    """The signals of this command, installed by `main`; a bare object where there is none."""
    found = ctx.find_object(Interrupts)
    return found if found is not None else Interrupts()


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


def positive(*flags: tuple[str, list[float]]) -> None:
    for flag, values in flags:
        if not all(0 < v < math.inf for v in values):
            raise ConfigError(f"{flag}: must be a finite number greater than 0")


def matrix_executors() -> Registry[Executor]:
    """Every executor a matrix can run on: `here` (experiment.matrix) and each module's of gpushare.fleet."""
    from ..experiment.matrix import EXECUTORS

    import_modules("gpushare.fleet")
    return EXECUTORS


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


def say_counts(command: str, cells: str, index: "MatrixIndex", written: Path) -> None:
    """How a plan's cells ended, and where its result is."""
    c = index.counts
    err_console.print(f"{command}: {c.complete} {cells} complete, {c.skipped} skipped (measured before), "
                      f"{c.failed} failed, {c.not_run} not run; {written}", markup=False, highlight=False,
                      soft_wrap=True)

