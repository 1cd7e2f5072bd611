"""A plan file: the tenants to place (model, workload, target load, SLO), the fleet they may use
(GPU models, counts, the placements allowed on each) and how capacities are measured and plans
proven. Strict like a scenario: an unknown key or a wrong value is one line naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError, model_validator

from .config import (MAX_NAME, NAME_PATTERN, AnyWorkload, ApiConfig, CapacityConfig, LoadConfig, ServerConfig,
                     SloConfig, _error_key_and_text)
from .config_file import read_config_file
from .errors import ConfigError
from .serving.mig import parse_profiles, table_profiles
from .strict import StrictModel

Placement = Literal["engine", "timeslice", "mps", "mig_emulation", "mig"]
"""How a GPU's tenants share it: `engine`, one server serving them all (one served model);
`timeslice` and `mps`, a server each on the whole GPU; `mig_emulation` and `mig`, a server
each in its own (MIG-like or true MIG) slice."""


class PlanTenant(StrictModel):
    """One tenant to place: what it serves, what it sends, how much, and what it must hold."""

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    model: str
    """A key of the plan's `models:` (the served model and its server settings)."""
    workload: AnyWorkload
    load: LoadConfig
    """Its target: `request_rate` (open loop) or `concurrency` (closed loop)."""
    slo: SloConfig
    api: ApiConfig | None = None

    @model_validator(mode="after")
    def _target(self) -> "PlanTenant":
        if self.load.steps is not None:
            raise ValueError("load.steps: a plan holds a tenant at one target; give request_rate or concurrency")
        return self

    @property
    def target(self) -> float:
        load = self.load
        return float(load.request_rate if load.open_loop else load.concurrency)  # type: ignore[arg-type]

    @property
    def unit(self) -> str:
        return "req/s" if self.load.open_loop else "in flight"


class FleetGpus(StrictModel):
    """GPUs of one model: how many, which placements they allow, and their MIG(-like) slices."""

    gpu: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    """The GPU model's name, as profiles are keyed by it (e.g. H200; `cpu` on a machine without one)."""
    count: int = Field(ge=0)
    placements: list[Placement] = Field(default=["engine"], min_length=1)
    slices: list[str] = []
    """Profile names (e.g. 3g.71gb) for mig_emulation and mig; default: gpushare's table for a
    GPU model it knows (A100, H100, H200, B200, A30), the nearest to memory_gib where two are."""
    memory_gib: PositiveFloat | None = None
    """The GPU's memory (GiB), which picks between two models of one name (H100 80 and 94 GB)."""
    max_tenants: PositiveInt = 4
    """The most tenants one GPU holds under engine, timeslice or mps (its servers' memory)."""

    @model_validator(mode="after")
    def _slices_where_partitioned(self) -> "FleetGpus":
        partitioned = sorted({"mig", "mig_emulation"} & set(self.placements))
        if not partitioned:
            return self
        if not self.profile_names:
            raise ValueError(f"slices: gpushare knows no MIG profiles of a GPU named '{self.gpu}' (for "
                             f"{', '.join(partitioned)}); give its profile names, e.g. [1g.18gb, 3g.71gb, 7g.141gb]")
        parsed = {p.name for p in parse_profiles(self.slices)}
        odd = [name for name in self.slices if name not in parsed]
        if odd:
            raise ValueError(f"slices: {', '.join(odd)} is not a profile name (<g>g.<memory>gb, e.g. 3g.71gb)")
        return self

    @property
    def profile_names(self) -> list[str]:
        return self.slices or [p.name for p in table_profiles(self.gpu, self.memory_gib or 0)]

    def mig_slices(self) -> list[tuple[str, int, int]]:
        """Each slice as (name, sevenths of compute, eighths of memory); none without a
        partitioned placement."""
        if not {"mig", "mig_emulation"} & set(self.placements):
            return []
        profiles = parse_profiles(self.profile_names)
        whole = max(p.memory_gib for p in profiles)
        return [(p.name, round(7 * p.slices / p.gpu_slices), round(8 * p.memory_gib / whole)) for p in profiles]


class ProofConfig(StrictModel):
    """How each GPU of a plan is proven: its tenants together at their targets for one window."""

    window_s: PositiveFloat = 30.0
    settle_s: NonNegativeFloat = 5.0


class PlanConfig(StrictModel):
    plan: str = Field(default="plan", pattern=NAME_PATTERN, max_length=MAX_NAME)
    models: dict[str, ServerConfig] = Field(min_length=1)
    """Per served model, the server that serves it (engine, args, env, command): a template the
    plan names and places itself. Its `model` defaults to the key."""
    tenants: list[PlanTenant] = Field(min_length=1)
    fleet: list[FleetGpus] = Field(min_length=1)
    margin: float = Field(default=0.1, ge=0, lt=1)
    """The share of each measured capacity held back: a tenant fits where its target is within
    (1 - margin) x its capacity there."""
    profile: CapacityConfig = CapacityConfig(window_s=15.0, settle_s=3.0, tolerance=0.2, budget=4)
    """How capacities are searched (tenant, beside and targets are the planner's)."""
    proof: ProofConfig = ProofConfig()
    store: Path | None = None
    """The profile store, reused across plans; default: OUT/profiles."""
    api: ApiConfig = ApiConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "PlanConfig":
        names = [t.name for t in self.tenants]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tenants: {', '.join(twice)} named twice")
        for i, tenant in enumerate(self.tenants):
            if tenant.model not in self.models:
                raise ValueError(f"tenants.{i}.model: '{tenant.model}' is not in models "
                                 f"(models: {', '.join(self.models)})")
        gpus = [f.gpu for f in self.fleet]
        if len(set(gpus)) != len(gpus):
            raise ValueError("fleet: a GPU model is listed twice; give each model once with its count")
        if not sum(f.count for f in self.fleet):
            raise ValueError("fleet: no GPUs (every count is 0); give at least one")
        for key in ("tenant", "beside", "targets"):
            if key in self.profile.model_fields_set:
                raise ValueError(f"profile.{key}: the planner chooses it; give window_s, settle_s, tolerance, "
                                 "budget, start or ceiling")
        return self

    def tenant(self, name: str) -> PlanTenant:
        return next(t for t in self.tenants if t.name == name)


def parse_plan(raw: Any) -> PlanConfig:
    if not isinstance(raw, dict):
        raise ConfigError("plan: expected a mapping of keys (plan, models, tenants, fleet, ...)")
    try:
        return PlanConfig.model_validate(raw)
    except ValidationError as err:
        key, text = _error_key_and_text(err)
        raise ConfigError(f"plan: {key}: {text}" if key else f"plan: {text}") from None


def read_plan(path: Path) -> PlanConfig:
    return parse_plan(read_config_file(path, "PLAN"))
