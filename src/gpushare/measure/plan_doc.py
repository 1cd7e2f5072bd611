"""The profile store's entries and proofs, and plan.json: one writer, one reader each, typed.

A profile store is a folder reused across plans. Each entry is one capacity search, recorded in
STORE/entries/<id>.json once it has ended; its id is a hash of what it measured (the tenant's
model, server, workload, API and SLO; the GPU model, engine and version, placement and slice; the
neighbour and its load; the search's settings), never of names, so another plan with the same
tenant reuses it. Its probes are run folders STORE/<setup>/<id>-<probe>, where <setup> names the
servers they ran on (the searches one set-up serves share one start of its servers).
STORE/proofs.json keeps every proof run's verdict on a group, so a group a run refuted is never
recommended again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.files import write_json_atomic

PROFILES_DIR, PROOFS_JSON, PLAN_JSON, PLAN_MD = "entries", "proofs.json", "plan.json", "plan.md"


class PlanModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProfileEntry(PlanModel):
    """One measured capacity: a tenant alone on a GPU (dedicated), in a slice, or beside one
    neighbour at its target under a shared placement."""

    id: str
    kind: Literal["dedicated", "slice", "beside"]
    gpu: str
    placement: str
    slice: str | None
    knob: Literal["request_rate", "concurrency"]
    target: float
    """The attainment its capacity is judged at (the tenant's SLO's)."""
    capacity: float
    """The highest level proven feasible (0: not even the lowest level probed)."""
    first_infeasible: float | None
    resolved: bool
    why: str
    probes: int
    capacity_run_dir: str | None
    key: dict[str, Any]
    """What was measured, in full (the id is its hash)."""


class ProofRecord(PlanModel):
    """A proof run of one GPU's tenants together at their targets."""

    gpu: str
    placement: str
    tenants: list[str]
    """The tenants' fingerprints (what each serves and sends, and its target)."""
    held: bool
    run_dir: str


class StoreUnreadable(Exception):
    """A file of the profile store or a plan that this version does not read."""


def _read(path: Path, model: type[PlanModel]) -> Any:
    try:
        return model.model_validate_json(path.read_text())
    except (ValidationError, ValueError, OSError) as err:
        first = str(err).splitlines()[0]
        raise StoreUnreadable(f"{path} is not readable as {model.__name__} ({first})") from None


def profile_path(store: Path, entry_id: str) -> Path:
    return store / PROFILES_DIR / f"{entry_id}.json"


def write_profile(store: Path, entry: ProfileEntry) -> None:
    profile_path(store, entry.id).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(profile_path(store, entry.id), entry.model_dump(mode="json"))


def read_profile(store: Path, entry_id: str) -> ProfileEntry | None:
    """An entry; None while its search has not ended."""
    path = profile_path(store, entry_id)
    return _read(path, ProfileEntry) if path.is_file() else None


class ProofBook(PlanModel):
    proofs: list[ProofRecord] = []


def read_proofs(store: Path) -> list[ProofRecord]:
    path = store / PROOFS_JSON
    return _read(path, ProofBook).proofs if path.is_file() else []


def add_proofs(store: Path, records: list[ProofRecord]) -> None:
    """Record proof verdicts; a later verdict on the same run folder replaces the earlier."""
    kept = {r.run_dir: r for r in read_proofs(store)}
    kept.update({r.run_dir: r for r in records})
    write_json_atomic(store / PROOFS_JSON, ProofBook(proofs=list(kept.values())).model_dump(mode="json"))


class SeatDoc(PlanModel):
    """One tenant on one GPU of the plan, as recommended and as measured."""

    tenant: str
    slice: str | None
    target: float
    unit: str
    capacity: float | None
    """Its capacity there under the plan's feasibility model (before the margin)."""
    headroom: float | None
    """1 - target / ((1 - margin) x capacity)."""
    attainment_target: float
    attainment: float | None
    """Measured in the proof run: good requests over measured ones (None: not measured)."""
    wilson_low: float | None
    good: int | None
    total: int | None


class GpuDoc(PlanModel):
    index: int
    gpu: str
    placement: str
    seats: list[SeatDoc]
    proven: bool
    proof_run_dir: str | None
    energy_per_token_j: float | None
    """From the proof run's NVML energy counter; None without NVML."""


class ProfileUse(PlanModel):
    """A capacity the plan's model read: whose, where, and the store entry that measured it
    (tenants that serve and send the same share one)."""

    tenant: str
    neighbour: str | None
    kind: Literal["dedicated", "slice", "beside"]
    gpu: str
    placement: str
    slice: str | None
    capacity: float
    resolved: bool
    entry: str
    """The entry's folder in the store: its probes' run folders and profile.json."""


class PlanDoc(PlanModel):
    plan: str
    status: Literal["proven", "unproven", "no_plan"]
    why: str
    gpus_used: int | None
    dedicated: int
    """One GPU per tenant."""
    lower_bound: int | None
    method: str | None
    optimal: bool | None
    margin: float
    rounds: int
    """Searches made: one, plus one after each round of proofs that refuted a group."""
    gpus: list[GpuDoc]
    refuted: list[ProofRecord]
    """Groups the proof runs refuted, this plan's and earlier ones' in the same store."""
    profiles: list[ProfileUse]
    store: str


def write_plan_doc(out: Path, doc: PlanDoc, markdown: str) -> None:
    write_json_atomic(out / PLAN_JSON, doc.model_dump(mode="json"))
    tmp = out / f".{PLAN_MD}.tmp"
    tmp.write_text(markdown)
    tmp.replace(out / PLAN_MD)


def read_plan_doc(out: Path) -> PlanDoc | None:
    path = out / PLAN_JSON
    return _read(path, PlanDoc) if path.is_file() else None


def fingerprint(doc: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able description (a profile key, a tenant)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
