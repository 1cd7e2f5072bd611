"""Scenario configuration: a config file's mapping (config_file.py reads it) in, one validated
`ScenarioConfig` out.

Every key is declared here, so an unknown key or a wrong type is rejected with a message
that names it. Command-line overrides are applied to the raw mapping before validation,
so a bad flag value is reported the same way as a bad YAML value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, get_args

import numpy as np
import yaml
from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from .errors import ConfigError
from .load.lengths import LengthDistribution
from .load.workloads import WORKLOADS, Workload
from .load.workloads.synthetic import SyntheticWorkload
from .serving.engines import ENGINES, STOP_GRACE_S
from .serving.sharing import SHARING_MODES, SharingMode
from .strict import BOOL_FOR_NUMBER, StrictModel

EMBEDDED_MODEL = "smollm2"
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
MAX_NAME = 64
"""Scenario and tenant names name folders (a matrix's scenario folder, an interference run's
solo-<tenant> phase): bounded, so that every folder name fits the file system."""


AnyWorkload = WORKLOADS.union()
"""`workload:` is one of the registered kinds, told apart by its `kind` key."""

# --- servers ----------------------------------------------------------------------------

EngineName = ENGINES.literal()


class ServerConfig(StrictModel):
    """One OpenAI-compatible server: launched by gpushare (`vllm`) or already running (`external`)."""

    name: str | None = None
    engine: EngineName = "vllm"
    model: str | None = None
    """Overrides the scenario's model for this server."""
    url: str | None = None
    """Base URL of an `external` server, e.g. http://127.0.0.1:8000."""
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)
    """Default: a free port, allocated when the run starts (recorded in summary.json's servers)."""
    command: list[str] | None = None
    """Replaces the engine's launcher, e.g. [python3, -m, vllm.entrypoints.cli.main, serve]."""
    args: list[str] = []
    env: dict[str, str] = {}
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """The engine's memory budget as a fraction of the whole GPU (set directly)."""
    memory_gib: PositiveFloat | None = None
    """mps / mig_emulation: memory cap; the engine's fraction is derived from it."""
    sm_percent: int | None = Field(default=None, ge=1, le=100)
    """mps / mig_emulation: compute cap (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE); needs MPS."""
    mig_profile: str | None = None
    """mig_emulation: caps of a MIG profile, e.g. 3g.40gb (memory 40 GiB, 3/7 of the SMs)."""
    mig_device: str | None = None
    """mig: the instance (MIG-<uuid>, or its index in NVML's list); default: the server's position."""
    tenant: str | None = None
    ready_timeout_s: PositiveFloat = 900.0
    stop_grace_s: PositiveFloat = STOP_GRACE_S
    """How long a stopping server may take to finish after SIGTERM before its group is killed."""

    @model_validator(mode="after")
    def _engine_fields(self) -> "ServerConfig":
        ENGINES[self.engine].check_keys(self)
        if self.mig_profile is not None and (self.memory_gib is not None or self.sm_percent is not None):
            raise ValueError("give either mig_profile or memory_gib/sm_percent, not both")
        if self.memory_gib is not None and self.gpu_memory_utilization is not None:
            raise ValueError("give either memory_gib or gpu_memory_utilization, not both")
        return self

    @property
    def launched(self) -> bool:
        """Whether gpushare starts this server (an external one is already running)."""
        return ENGINES[self.engine].launched

    @property
    def capped(self) -> bool:
        return self.memory_gib is not None or self.sm_percent is not None or self.mig_profile is not None


SharingModeName = SHARING_MODES.literal()


class SharingConfig(StrictModel):
    """How the servers share the GPU (docs/sharing.md)."""

    mode: SharingModeName = "baseline"
    mps: bool = False
    """mig_emulation: also run the servers under MPS (needed for compute caps)."""
    mps_pipe_directory: Path | None = None
    """Use the MPS daemon already running with this pipe directory (it is left running)."""
    gpu: int = Field(default=0, ge=0)
    memory_headroom_gib: float = Field(default=3.0, ge=0)
    """Kept out of a memory cap when it is turned into the engine's fraction of the GPU."""

    @property
    def implementation(self) -> type[SharingMode]:
        """The registered class of the mode."""
        return SHARING_MODES[self.mode]

    @property
    def uses_mps(self) -> bool:
        return self.implementation.uses_mps(self)


# --- requests and load -----------------------------------------------------------------


class ApiConfig(StrictModel):
    endpoint: Literal["completions", "chat"] = "completions"
    stream: bool = True
    ignore_eos: bool = True
    """vLLM extension: generate exactly max_tokens tokens."""
    temperature: float = Field(default=0.0, ge=0)
    timeout_s: PositiveFloat = 600.0
    extra_body: dict[str, Any] = {}
    api_key: str | None = None


class StepSchedule(StrictModel):
    """A load that changes over time: level i holds for `step_s` seconds, then the next one.
    Level 0 sends nothing for its step (an aggressor that starts idle, say)."""

    concurrency: list[NonNegativeInt] | None = Field(default=None, min_length=1)
    request_rate: list[float] | None = Field(default=None, min_length=1)
    step_s: PositiveFloat

    @model_validator(mode="after")
    def _one_kind(self) -> "StepSchedule":
        if (self.concurrency is None) == (self.request_rate is None):
            raise ValueError("give either concurrency or request_rate levels")
        if any(level < 0 for level in self.levels):
            raise ValueError(f"levels must be >= 0 (got {self.levels})")
        if not any(level > 0 for level in self.levels):
            raise ValueError("at least one level must be greater than 0")
        return self

    @property
    def kind(self) -> Literal["concurrency", "request_rate"]:
        return "concurrency" if self.concurrency is not None else "request_rate"

    @property
    def levels(self) -> list[float]:
        return [float(v) for v in (self.concurrency if self.concurrency is not None else self.request_rate or [])]

    @property
    def duration_s(self) -> float:
        return len(self.levels) * self.step_s

    def step_at(self, elapsed: float) -> int:
        """The step that holds `elapsed` seconds into the window (the last one past its end)."""
        return min(len(self.levels) - 1, max(0, int(elapsed // self.step_s)))

    def step_end(self, step: int) -> float:
        """Seconds into the window at which `step` ends."""
        return (step + 1) * self.step_s


def step_clock(loads: Iterable[LoadConfig]) -> StepSchedule | None:
    """The schedule every tenant's requests are binned by: the first stepped load's (the
    aggressor's), so a victim's latency can be read against the aggressor's level."""
    return next((load.steps for load in loads if load.steps is not None), None)


class LoadConfig(StrictModel):
    """Closed loop at `concurrency`, or open loop at `request_rate` (then concurrency caps in-flight),
    or a step schedule of either (`steps`), which also sets the window's length."""

    concurrency: PositiveInt | None = None
    request_rate: PositiveFloat | None = None
    burstiness: PositiveFloat = 1.0
    """Gamma shape of inter-arrival times: 1 is Poisson, <1 burstier, >1 more regular."""
    n_requests: PositiveInt | None = None
    duration_s: PositiveFloat | None = None
    warmup_requests: NonNegativeInt = 2
    settle_s: NonNegativeFloat = 0.0
    """Seconds at the window's start whose requests are sent but not measured, so that what is
    measured is the load's steady state (an open loop above capacity builds its queue first)."""
    routing: Literal["round_robin", "tenant"] = "round_robin"
    steps: StepSchedule | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("steps"), dict):
                try:
                    steps = StepSchedule.model_validate(data["steps"])
                except ValidationError:
                    return data  # reported under load.steps by the field's own validation
                return cls._stepped(data, steps)
            if data.get("concurrency") is None and data.get("request_rate") is None:
                data["concurrency"] = 8
            if data.get("n_requests") is None and data.get("duration_s") is None:
                data["n_requests"] = 100
        return data

    @staticmethod
    def _stepped(data: dict[str, Any], steps: StepSchedule) -> dict[str, Any]:
        """A schedule sets the window's length and the peak of its own kind; a value given
        beside it must agree (a dumped config carries both)."""
        peak = max(steps.levels)
        derived: dict[str, Any] = {"duration_s": steps.duration_s, "n_requests": None,
                                   steps.kind: int(peak) if steps.kind == "concurrency" else peak}
        if steps.kind == "concurrency":
            derived["request_rate"] = None
        for key, value in derived.items():
            if data.get(key) is not None and data[key] != value:
                raise ValueError(f"{key}: not with steps, which set it (to {value:g})" if value is not None
                                 else f"{key}: not with steps, whose length bounds the window")
            data[key] = value
        return data

    @property
    def open_loop(self) -> bool:
        return self.request_rate is not None

    def summary_fields(self) -> dict[str, Any]:
        """How the load was offered, in summary.json's keys (a step schedule: its peak)."""
        mode = "steps" if self.steps is not None else "open_loop" if self.open_loop else "closed_loop"
        return {"load_mode": mode, "max_concurrency": self.concurrency, "request_rate": self.request_rate,
                "burstiness": self.burstiness}


SLO_BOUNDS = ("ttft", "tpot", "itl", "e2el")


class SloConfig(StrictModel):
    """A tenant's objective: bounds in seconds, every one of which a request must meet to be
    good (a failed request meets none), and the share of its measured requests that must be
    good (`attainment`), which the capacity search holds it to."""

    ttft: PositiveFloat | None = None
    tpot: PositiveFloat | None = None
    itl: PositiveFloat | None = None
    """Applies to a request's worst gap between tokens."""
    e2el: PositiveFloat | None = None
    attainment: float = Field(default=0.99, gt=0, le=1)

    @model_validator(mode="after")
    def _bounded(self) -> "SloConfig":
        if not self.bounds:
            raise ValueError(f"give at least one bound ({', '.join(SLO_BOUNDS)}, in seconds); an SLO without "
                             "bounds holds every request good")
        return self

    @property
    def bounds(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in SLO_BOUNDS if getattr(self, name) is not None}


def _no_slo_when_empty(value: Any) -> Any:
    """`slo: {}` is no SLO: the default every recorded configuration dumped before an SLO had a
    target. A block that names only a target is still refused (SloConfig)."""
    return None if value == {} else value


MaybeSlo = Annotated[SloConfig | None, BeforeValidator(_no_slo_when_empty)]


class TenantConfig(StrictModel):
    """One workload that shares the GPU with the others: its own requests, load, SLO and seed,
    sent to the servers it names. What it does not give, it takes from the scenario."""

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    servers: list[str] = Field(min_length=1)
    """Server names; several tenants may name the same server (one engine serving them all)."""
    workload: AnyWorkload | None = None
    load: LoadConfig | None = None
    slo: MaybeSlo = None
    api: ApiConfig | None = None
    seed: int | None = None
    """Default: derived from the scenario's seed and the tenant's name, so a tenant sends the
    same requests alone and shared."""


@dataclass(frozen=True)
class Tenant:
    """A tenant with everything resolved: what the load generator and the summary need."""

    name: str | None
    """None for the one implicit tenant of a scenario without `tenants:`."""
    servers: tuple[int, ...]
    workload: Workload
    load: LoadConfig
    api: ApiConfig
    slo: dict[str, float]
    """The SLO's bounds in seconds (none: no SLO)."""
    attainment: float | None
    """The share of requests that must meet them (None: no SLO)."""
    seed: int


def tenant_seed(seed: int, name: str) -> int:
    """A tenant's own seed from the scenario's and its name (not its position), so the
    tenant's requests are the same in every phase of an interference run."""
    entropy = [seed, *name.encode()]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


class CapacityConfig(StrictModel):
    """How `gpushare capacity` searches this scenario (docs/capacity.md); its flags override
    each key. A probe's own configuration leaves this block out, so changing how the search
    goes never makes a finished probe look measured under other settings."""

    tenant: str | None = None
    """The tenant searched (--tenant)."""
    beside: dict[str, list[PositiveFloat]] = {}
    """Neighbour levels to search beside, per neighbour (--beside NAME=L1,L2); none: every
    neighbour at its configured load."""
    targets: list[Annotated[float, Field(gt=0, lt=1)]] | None = None
    """Attainment targets searched at once (--target); none: the tenant's SLO's."""
    window_s: PositiveFloat = 20.0
    settle_s: NonNegativeFloat = 5.0
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.1
    budget: Annotated[int, Field(ge=2)] = 12
    start: PositiveFloat | None = None
    ceiling: PositiveFloat | None = None


class ScenarioConfig(StrictModel):
    scenario: str = Field(default="run", pattern=NAME_PATTERN, max_length=MAX_NAME)
    model: str = EMBEDDED_MODEL
    """The embedded model's name, a local model folder, or a hub id you have cached."""
    served_model_name: str | None = None
    tokenizer: str | None = None
    """Tokenizer folder or id, when it differs from the model (e.g. external servers)."""
    servers: list[ServerConfig] = Field(default_factory=lambda: [ServerConfig()], min_length=1)
    sharing: SharingConfig = SharingConfig()
    workload: AnyWorkload = SyntheticWorkload()
    api: ApiConfig = ApiConfig()
    load: LoadConfig = LoadConfig()
    slo: MaybeSlo = None
    """Service-level objectives in seconds; a request is good when it meets all of them."""
    tenants: list[TenantConfig] = []
    """Workloads that share the servers, each measured on its own (docs/tenants.md); none:
    the scenario's own workload and load are its one tenant."""
    active_tenants: list[str] | None = None
    """Only these tenants send load; the others' servers stay up, idle (an interference run's
    solo phases). Default: every tenant."""
    seed: int = 0
    out: Path = Path("runs")
    monitor_interval_s: PositiveFloat = 0.2
    capacity: CapacityConfig | None = None

    @model_validator(mode="after")
    def _servers_distinct(self) -> "ScenarioConfig":
        launched = [(s.host, s.port) for s in self.servers if s.launched and s.port is not None]
        if len(set(launched)) != len(launched):
            raise ValueError("servers: two launched servers share a host and port")
        self.sharing.implementation.check_servers(self.servers, self.sharing)
        if self.load.routing == "tenant" and any(s.tenant is None for s in self.servers):
            raise ValueError("load.routing: tenant needs a 'tenant' label on every server")
        self._tenants_valid()
        return self

    def _tenants_valid(self) -> None:
        if not self.tenants:
            if self.active_tenants is not None:
                raise ValueError("active_tenants: only for a scenario with tenants")
            return
        names, known = [t.name for t in self.tenants], self.server_names()
        if len(set(names)) != len(names):
            raise ValueError(f"tenants: two tenants share a name ({', '.join(names)})")
        if len(set(known)) != len(known):
            raise ValueError(f"servers: two servers share a name ({', '.join(known)}); tenants name them")
        for i, tenant in enumerate(self.tenants):
            if len(set(tenant.servers)) != len(tenant.servers):
                raise ValueError(f"tenants.{i}.servers: a server is named twice ({', '.join(tenant.servers)})")
            for server in tenant.servers:
                if server not in known:
                    raise ValueError(f"tenants.{i}.servers: no server is named '{server}' "
                                     f"(servers: {', '.join(known)})")
            if (tenant.load or self.load).routing == "tenant":
                raise ValueError(f"tenants.{i}.load.routing: tenants name their servers; routing: tenant is "
                                 "for a scenario without tenants")
        if self.active_tenants is not None:
            if not self.active_tenants:
                raise ValueError("active_tenants: empty; name at least one tenant, or leave it out for all of them")
            if len(set(self.active_tenants)) != len(self.active_tenants):
                raise ValueError(f"active_tenants: a tenant is named twice ({', '.join(self.active_tenants)})")
        for name in self.active_tenants or []:
            if name not in names:
                raise ValueError(f"active_tenants: no tenant is named '{name}' (tenants: {', '.join(names)})")
        active = [i for i, t in enumerate(self.tenants) if self.loads(t)]
        for i in active if len(active) > 1 else []:
            if (self.tenants[i].load or self.load).duration_s is None:
                raise ValueError(f"tenants.{i}.load: tenants that load together share one window bounded by time; "
                                 "give duration_s or steps")
        unused = [name for name in known if not any(name in t.servers for t in self.tenants)]
        if unused:
            raise ValueError(f"servers: no tenant sends to {', '.join(unused)}")

    def server_names(self) -> list[str]:
        return [s.name or f"server-{i}" for i, s in enumerate(self.servers)]

    def resolved_tenants(self) -> list[Tenant]:
        """The tenants with the scenario's values filled in; one implicit tenant without `tenants:`."""
        if not self.tenants:
            return [Tenant(None, tuple(range(len(self.servers))), self.workload, self.load, self.api,
                           self.slo_bounds, self.slo and self.slo.attainment, self.seed)]
        position = {name: i for i, name in enumerate(self.server_names())}
        return [
            Tenant(t.name, tuple(position[s] for s in t.servers), t.workload or self.workload, t.load or self.load,
                   t.api or self.api, *_objective(self.slo if t.slo is None else t.slo),
                   tenant_seed(self.seed, t.name) if t.seed is None else t.seed)
            for t in self.tenants if self.loads(t)
        ]

    @property
    def slo_bounds(self) -> dict[str, float]:
        """The scenario's own SLO bounds (none: no SLO)."""
        return self.slo.bounds if self.slo is not None else {}

    def loads(self, tenant: TenantConfig) -> bool:
        """Whether the tenant sends load in this run (every tenant, unless active_tenants says)."""
        return self.active_tenants is None or tenant.name in self.active_tenants


def _objective(slo: SloConfig | None) -> tuple[dict[str, float], float | None]:
    return (slo.bounds, slo.attainment) if slo is not None else ({}, None)


_UNION_TAGS = {*WORKLOADS.names, *(get_args(cls.model_fields["dist"].annotation)[0]
                                  for cls in get_args(get_args(LengthDistribution)[0]))}


def _error_key_and_text(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    # A discriminated union puts the chosen variant in the path (workload.synthetic.input_tokens...).
    loc = ".".join(str(p) for p in first["loc"] if str(p) not in _UNION_TAGS and not str(p).startswith("function-"))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return loc, "unknown key"
    if first["type"] == BOOL_FOR_NUMBER:
        return ".".join(p for p in (loc, first["ctx"]["key"]) if p), f"{msg} (got {first['ctx']['value']!r})"
    given = first.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
    return loc, f"{msg}{shown}"


def parse_config(raw: dict[str, Any], flags: dict[str, str] | None = None) -> ScenarioConfig:
    """Validate; an error names the command-line flag when `flags` maps its key to one."""
    try:
        return ScenarioConfig.model_validate(raw)
    except ValidationError as err:
        key, text = _error_key_and_text(err)
        where = (flags or {}).get(key) or (f"config: {key}" if key else "config")
        raise ConfigError(f"{where}: {text}") from None


def dump_config(config: ScenarioConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
