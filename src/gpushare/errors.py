"""Errors that reach the user as one line and an exit code, never as a traceback."""

from __future__ import annotations


class GpushareError(Exception):
    """A failure the user can act on; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(GpushareError):
    """Bad input: config, flags, files, or a machine that cannot run what was asked."""

    exit_code = 2


class RunFailure(GpushareError):
    """Something broke while running (a server never became ready, died, ...)."""

    exit_code = 1
