"""capacity.json and capacity.csv: one writer, one reader, typed.

A row per scenario × tenant × neighbour setting × attainment target, and every probe behind
them with its run folder, so each row can be re-derived from the probes' requests.csv.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..config import CapacityConfig
from ..core.files import write_json_atomic

CAPACITY_JSON, CAPACITY_CSV, CAPACITY_PROBES_CSV = "capacity.json", "capacity.csv", "capacity_probes.csv"


class CapacityModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProbeEntry(CapacityModel):
    """One measured probe: the searched tenant's good and measured requests at one level."""

    scenario: str
    beside: str
    level: float
    window: int
    """Its window as a multiple of the search's base window."""
    good: int
    total: int
    attainment: float | None
    wilson_low: float
    wilson_high: float
    judged: dict[str, Literal["feasible", "infeasible", "unresolved"]]
    """Per target (as text, e.g. "0.99")."""
    run_dir: str


class CapacityRow(CapacityModel):
    """The capacity of one tenant beside one neighbour setting, for one target."""

    scenario: str
    sharing_mode: str
    tenant: str
    knob: Literal["request_rate", "concurrency"]
    beside: str
    """e.g. "batch=16"; empty: alone (the neighbours' servers up and idle)."""
    target: float
    capacity: float | None
    """The highest level proven feasible below every level not proven so (0: not even the
    lowest level probed); None: no probe completed."""
    first_infeasible: float | None
    attainment_at_capacity: float | None
    wilson_low_at_capacity: float | None
    wilson_high_at_capacity: float | None
    attainment_at_first_infeasible: float | None
    wilson_low_at_first_infeasible: float | None
    wilson_high_at_first_infeasible: float | None
    binding: str | None
    """The bound the requests at first_infeasible missed most (ttft, tpot, itl, e2el), or failed."""
    probes: int
    resolved: bool
    why: str
    non_monotone: list[float]
    capacity_kept: float | None
    """capacity beside / capacity alone, for the same target; None alone or where either is unknown."""
    capacity_run_dir: str | None
    first_infeasible_run_dir: str | None


class CapacityDoc(CapacityModel):
    searches: dict[str, CapacityConfig]
    """How each scenario was searched: tenant, neighbour levels, targets, windows, budget."""
    rows: list[CapacityRow]
    probes: list[ProbeEntry]


def write_capacity_doc(out: Path, doc: CapacityDoc) -> None:
    write_json_atomic(out / CAPACITY_JSON, doc.model_dump(mode="json"))
    for name, model, items in ((CAPACITY_CSV, CapacityRow, doc.rows), (CAPACITY_PROBES_CSV, ProbeEntry, doc.probes)):
        tmp = out / f".{name}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, list(model.model_fields))
            writer.writeheader()
            for item in items:
                row = item.model_dump(mode="json")
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
        tmp.replace(out / name)


class CapacityUnreadable(Exception):
    """capacity.json exists but is not one this version reads."""


def read_capacity_doc(out: Path) -> CapacityDoc | None:
    """OUT/capacity.json, or None where there is none."""
    path = out / CAPACITY_JSON
    if not path.is_file():
        return None
    try:
        return CapacityDoc.model_validate_json(path.read_text())
    except (ValueError, OSError) as err:
        first = str(err).splitlines()[0]
        raise CapacityUnreadable(f"{path} is not readable as a capacity result ({first})") from None
