"""The `gpushare` command line: one module per command (or pair of commands), each registering
on the app of `app.py`; `main` is the edge where failures become one line and signals are handled."""

from __future__ import annotations

import sys

import click
import typer

from ..errors import GpushareError
from ..interrupts import Interrupted, Interrupts
from . import run, matrix, interfere, capacity, plan, outputs, doctor  # each registers its commands, in --help's order
from .app import app, err_console

__all__ = ["app", "main", "capacity", "doctor", "interfere", "matrix", "outputs", "plan", "run"]


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

