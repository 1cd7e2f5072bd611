"""The run folder's verdict and summary: one writer, one reader.

A run folder gets a `summary.json` that says `"complete": false` the moment it exists, and
the real summary replaces it atomically when the run ends. So a folder whose run was killed
(SIGKILL, power loss) still says, truthfully, that it is not complete, and a summary is never
read half-written. Everything that decides whether a run counts (`analyze`, `report`, the
matrix's resume) asks `read_verdict`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
UNFINISHED = "the run did not finish (it was killed, or is still running)"


@dataclass(frozen=True)
class Verdict:
    """Whether a run folder holds a complete measurement, and if not, why."""

    complete: bool
    error: str | None

    @property
    def reason(self) -> str:
        return "complete" if self.complete else (self.error or "incomplete")


class SummaryUnreadable(Exception):
    """summary.json is missing, not JSON, or not a JSON object; the message names the file."""


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write through a temporary file and a rename, so a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=2, allow_nan=False))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_unfinished(folder: Path, scenario: str) -> None:
    """The summary a run folder holds until its run ends: not complete."""
    write_json_atomic(folder / SUMMARY, {"scenario": scenario, "complete": False, "error": UNFINISHED})


def write_summary(folder: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(folder / SUMMARY, doc)


def read_summary(folder: Path) -> dict[str, Any]:
    path = folder / SUMMARY
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SummaryUnreadable(f"{path}: missing") from None
    except (OSError, ValueError) as err:
        raise SummaryUnreadable(f"{path}: not readable as JSON ({err})") from None
    if not isinstance(doc, dict):
        raise SummaryUnreadable(f"{path}: not a JSON object")
    return doc


def verdict_of(doc: dict[str, Any]) -> Verdict:
    """Complete only when the summary says so and records no error."""
    error = doc.get("error")
    complete = doc.get("complete") is True and not error
    if not complete and not error:
        error = "marked incomplete"
    return Verdict(complete, None if complete else str(error))


def read_verdict(folder: Path) -> Verdict:
    try:
        return verdict_of(read_summary(folder))
    except SummaryUnreadable as err:
        if not (folder / SUMMARY).exists():
            return Verdict(False, f"no {SUMMARY}: {UNFINISHED}")
        return Verdict(False, str(err))
