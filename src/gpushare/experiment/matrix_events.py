"""Typed events of a matrix: what an executor reports, wherever the cells run, and their one
encoding (a JSON line), the same for a worker process's pipe and a Ray actor's answer.

They live beside the matrix, not on the ground floor, because a finished cell carries its
matrix.json entry (`CellEntry`), a type of the results files.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ..measure.results import CellEntry


class _MatrixEvent(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class CellStarted(_MatrixEvent):
    """A cell's load is about to start on `where` (a GPU, a node)."""

    event: Literal["cell_started"] = "cell_started"
    scenario: str
    cell: str
    where: str


class CellFinished(_MatrixEvent):
    """A cell ended: its matrix.json entry (a cell never run gets one too) and exit code."""

    event: Literal["cell_finished"] = "cell_finished"
    entry: CellEntry
    exit_code: int


class ServersTimed(_MatrixEvent):
    """A scenario's servers took `seconds` to start or to stop."""

    event: Literal["servers_timed"] = "servers_timed"
    what: Literal["start", "stop"]
    seconds: float


MatrixEvent = Annotated[Union[CellStarted, CellFinished, ServersTimed], Field(discriminator="event")]
_EVENTS: TypeAdapter[MatrixEvent] = TypeAdapter(MatrixEvent)


def encode_event(event: MatrixEvent) -> str:
    """One JSON line (no newline) that `decode_event` reads back as an equal event."""
    return event.model_dump_json()


def decode_event(line: str | bytes) -> MatrixEvent:
    return _EVENTS.validate_json(line)
