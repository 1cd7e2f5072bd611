"""The run folder's files and the matrix index, typed: one writer and one reader each.

A run folder gets a `summary.json` that says `"complete": false` the moment it exists, and
the real summary replaces it atomically when the run ends. So a folder whose run was killed
(SIGKILL, power loss) still says, truthfully, that it is not complete, and a summary is never
read half-written. Everything that decides whether a run counts (`analyze`, `report`, the
matrix's resume) asks `read_verdict`.

What the files hold is declared here as pydantic models (`Summary`, `MatrixIndex`), their
metric keys generated from metric_catalog. The writers validate a document through its model
and then write the document itself, so the files stay as they were and whatever is written
reads back; the readers return the models, so callers read attributes, not string keys. A key
a model does not declare is refused, so a misspelt key fails its writer instead of passing
silently; a key that any committed run wrote is declared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from ..config import ConfigError, LoadConfig, ScenarioConfig, parse_config
from ..config_file import load_yaml
from ..core.files import CONFIG, ENV, INDEX, SUMMARY, SUPERSEDED, write_json_atomic
from ..core.gpus import GpuInfo
from ..errors import RunFailure
from .metric_catalog import CATALOGUE, Where

UNFINISHED = "the run did not finish (it was killed, or is still running)"
IDENTITY = ("scenario", "sharing_mode", "load_mode")
"""What a complete summary must say it measured; analysis cannot place a run without them."""


@dataclass(frozen=True)
class Verdict:
    """Whether a run folder holds a complete measurement, and if not, why."""

    complete: bool
    error: str | None

    @classmethod
    def of(cls, complete: Any, error: Any) -> "Verdict":
        """Complete only when the summary says so and records no error."""
        ok = complete is True and not error
        return cls(ok, None if ok else str(error or "marked incomplete"))

    @property
    def reason(self) -> str:
        return "complete" if self.complete else (self.error or "incomplete")


class SummaryUnreadable(Exception):
    """summary.json is missing, not JSON, not a JSON object, or not a summary; the message names the file."""


# --- the models ---------------------------------------------------------------------------------


class Record(BaseModel):
    """A block of a results file: strict types (an int stays an int, a bool is no number); a key
    it does not declare is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def pick(self, keys: Iterable[str]) -> dict[str, Any]:
        """These keys' values in the order given (a table's columns); a key not declared fails."""
        keys = list(keys)
        dump = self.model_dump(include=set(keys))
        return {key: dump[key] for key in keys}


def _catalogued(name: str, where: tuple[Where, ...], base: type[Record], doc: str) -> Any:
    """A model whose fields are the catalogue's keys written `where`, each absent or null
    where nothing was measured: the catalogue stays the one declaration of the keys."""
    fields: dict[str, Any] = {m.key: (m.type | None, None) for m in CATALOGUE if m.where in where}
    return create_model(name, __base__=base, __doc__=doc, **fields)


MetricBlock = _catalogued("MetricBlock", ("summary", "slo"), Record,
                          "metric_catalog.flat()'s keys: the whole run, one endpoint, one tenant or one step.")
GpuWindow = _catalogued("GpuWindow", ("gpu",), Record, "The `gpu` block (metrics.gpu_window).")


class ServerEntry(Record):
    """One of `servers`: where a server listened, its process, start-up time and KV cache."""

    name: str
    base_url: str | None = None
    pid: int | None = None
    startup_s: float | None = None
    kv_cache_tokens: int | None = None
    exit_code: int | None = None


class Location(Record):
    """Where a run measured: the node and the GPU (None where there is no NVML, e.g. a CPU run
    or a fake GPU of a test cluster). Cells of one matrix may run on different GPUs and nodes,
    so each run records its own."""

    node: str
    gpu_index: int | None = None
    gpu_name: str | None = None
    gpu_uuid: str | None = None
    gpu_memory_mib: int | None = None

    @property
    def gpu_model(self) -> str:
        """What analysis groups by: the GPU's name, or "CPU" where the run had none."""
        return self.gpu_name or "CPU"


class StepBlock(MetricBlock):
    """A tenant's metrics over one step of the aggressor's schedule."""

    step: int
    level: float


class ByStep(Record):
    """A tenant's metrics per step of the schedule every tenant is binned by (its aggressor's)."""

    tenant: str | None
    step_s: float
    kind: Literal["concurrency", "request_rate"]
    steps: list[StepBlock]


class Measured(MetricBlock):
    """What the whole run and each tenant have: metrics, the load offered, the requests left
    out of the window. Old tenant blocks lack the load keys: their `load` says it."""

    load_mode: str | None = None
    max_concurrency: int | None = None
    request_rate: float | None = None
    burstiness: float | None = None
    slo_s: dict[str, float] = {}
    workload: dict[str, Any] | None = None
    warmup_requests: int | None = None
    out_of_window: int | None = None


class TenantBlock(Measured):
    """One of `tenants` (experiment.run.summary.tenant_blocks): over the common window, the tenant's requests only."""

    servers: list[str] = []
    load: LoadConfig
    seed: int | None = None
    by_step: ByStep | None = None


RunMetrics = _catalogued("RunMetrics", ("run",), Measured, "A run's metrics and the runner's own (top level only).")


class Summary(RunMetrics):
    """summary.json, as experiment.run.summary assembles it, or the placeholder that
    says a run has not finished (scenario, complete, error only)."""

    scenario: str
    complete: bool
    error: str | None = None
    sharing_mode: str | None = None
    num_prompts: int | None = None
    endpoint_type: str | None = None
    stream: bool | None = None
    token_counting: str | None = None
    servers: list[ServerEntry] = []
    per_endpoint: dict[str, MetricBlock] = {}
    tenants: dict[str, TenantBlock] | None = None
    server_counters: dict[str, dict[str, float] | None] = {}
    placements: dict[str, dict[str, Any]] = {}
    mps: dict[str, Any] | None = None
    gpu: GpuWindow | None = None
    location: Location | None = None
    """Absent in runs recorded before it was; analysis then reads env.json (run_location)."""

    @model_validator(mode="before")
    @classmethod
    def _identified(cls, doc: Any) -> Any:
        """A complete run must say what it measured; a placeholder need not."""
        if isinstance(doc, dict) and verdict_of(doc).complete:
            lacking = [key for key in IDENTITY if not isinstance(doc.get(key), str)]
            if lacking:
                raise PydanticCustomError("lacks", "lacks {keys}", {"keys": ", ".join(lacking)})
        return doc

    @property
    def verdict(self) -> Verdict:
        return Verdict.of(self.complete, self.error)


class CellEntry(Record):
    """One of matrix.json's `cells`: which cell, its run folder, how it ended, and its time.
    Keys it does not declare are dropped, as an older index's were."""

    model_config = ConfigDict(extra="ignore")

    scenario: str
    cell: str
    load_kind: Literal["concurrency", "request_rate", "phase"]
    load: float | None
    repeat: int
    run_dir: str
    status: Literal["complete", "skipped", "failed", "not_run"]  # skipped: complete before
    error: str | None = None
    wall_s: float = 0.0
    measured_s: float = 0.0
    location: Location | None = None
    """Where the cell ran; None for a cell never run, or one indexed before cells said."""
    config_hash: str | None = None
    """The settings the cell was planned with (matrix.config_hash); None in an index written
    before cells recorded it (a resume then hashes the cell's config.yaml)."""


class SupersededAttempt(Record):
    """An earlier attempt at a cell that a rerun set aside beside it (CELL.attempt-N) instead
    of deleting it: one of matrix.json's `superseded`, and the folder's own superseded.json."""

    scenario: str
    cell: str
    run_dir: str
    reason: str
    """Why it was set aside: it did not finish, or it was measured under other settings."""
    config_hash: str | None = None


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Invocation(Record):
    """Where one invocation's wall time went. A matrix resumed over several invocations keeps
    every invocation's record, as it was recorded, so its measured fraction counts all the time
    it took."""

    model_config = ConfigDict(frozen=False)  # the invocation under way adds up its time

    started: str | None = Field(default_factory=_utc_now)
    wall_s: float = 0.0
    measured_s: float | int | None = 0.0  # an invocation that measured nothing recorded the integer 0
    server_start_s: float = 0.0
    server_stop_s: float = 0.0
    cells_run: int = 0


class CellCounts(Record):
    """How many cells ended each way."""

    complete: int = 0
    skipped: int = 0
    failed: int = 0
    not_run: int = 0


class MatrixIndex(Record):
    """matrix.json: every cell, and the wall time over all invocations with its share inside
    measurement windows."""

    cells: list[CellEntry] = []
    planned_cells: int | None = None
    wall_s: float = 0.0
    measured_s: float = 0.0
    measured_fraction: float | None = None
    invocations: list[Invocation]
    counts: CellCounts = CellCounts()
    superseded: list[SupersededAttempt] = []
    """Earlier attempts set aside by reruns; never counted as runs."""

    @model_validator(mode="before")
    @classmethod
    def _one_invocation(cls, doc: Any) -> Any:
        """An index written before invocations were recorded: its own wall time, as one."""
        if isinstance(doc, dict) and "invocations" not in doc:
            return {**doc, "invocations": [{"started": None, "wall_s": doc.get("wall_s", 0.0), "measured_s": None}]}
        return doc


# --- writing and reading -----------------------------------------------------------------------


def write_summary(folder: Path, summary: Summary) -> None:
    """summary.json: the keys `summary` was given (or read with), none it was not."""
    write_json_atomic(folder / SUMMARY, summary.model_dump(mode="json", exclude_unset=True))


def write_unfinished(folder: Path, scenario: str) -> None:
    """The summary a run folder holds until its run ends: not complete."""
    write_summary(folder, Summary(scenario=scenario, complete=False, error=UNFINISHED))


def read_summary(folder: Path) -> dict[str, Any]:
    """summary.json as JSON, whatever it says: enough for a verdict."""
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


def validation_problem(err: ValidationError) -> str:
    """What is wrong, by key: the keys missing, else the first problem."""
    problems = err.errors()
    missing = [".".join(map(str, p["loc"])) for p in problems if p["type"] == "missing"]
    if missing:
        return f"lacks {', '.join(missing)}"
    where = ".".join(map(str, problems[0]["loc"]))
    return f"{where}: {problems[0]['msg']}" if where else problems[0]["msg"]


def read_run(folder: Path) -> Summary:
    """summary.json as a `Summary`; SummaryUnreadable names the file and what is wrong."""
    try:
        return Summary.model_validate(read_summary(folder))
    except ValidationError as err:
        raise SummaryUnreadable(f"{folder / SUMMARY}: {validation_problem(err)}") from None


def verdict_of(doc: dict[str, Any]) -> Verdict:
    """The verdict of a summary document, however little else it says."""
    return Verdict.of(doc.get("complete"), doc.get("error"))


def read_verdict(folder: Path) -> Verdict:
    """Whether the folder's run counts; an attempt a rerun set aside never does, complete or not."""
    superseded = read_superseded(folder)
    if superseded is not None:
        return Verdict(False, f"superseded: an earlier attempt at cell {superseded.cell} ({superseded.reason})")
    try:
        return verdict_of(read_summary(folder))
    except SummaryUnreadable as err:
        if not (folder / SUMMARY).exists():
            return Verdict(False, f"no {SUMMARY}: {UNFINISHED}")
        return Verdict(False, str(err))


def write_superseded(folder: Path, attempt: SupersededAttempt) -> None:
    write_json_atomic(folder / SUPERSEDED, attempt.model_dump())


def read_superseded(folder: Path) -> SupersededAttempt | None:
    """The folder's superseded.json; one that does not read still marks the folder superseded."""
    path = folder / SUPERSEDED
    if not path.exists():
        return None
    try:
        return SupersededAttempt.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError):
        return SupersededAttempt(scenario="?", cell=folder.name, run_dir=str(folder), reason=f"{path} does not read")


def write_matrix_index(folder: Path, doc: dict[str, Any]) -> MatrixIndex:
    """matrix.json: the document, once `MatrixIndex` has read it."""
    index = MatrixIndex.model_validate(doc)
    write_json_atomic(folder / INDEX, doc)
    return index


def read_matrix_index(folder: Path) -> MatrixIndex | None:
    """matrix.json as a `MatrixIndex`; None where there is none readable (the matrix starts afresh)."""
    try:
        return MatrixIndex.model_validate(json.loads((folder / INDEX).read_text()))
    except (OSError, ValueError):  # ValidationError is a ValueError
        return None


def assigned_gpu(name: str, gpu: GpuInfo) -> int:
    """The NVML index of a GPU a scheduler assigned by the name CUDA_VISIBLE_DEVICES gives it
    (Ray's `get_gpu_ids()`): a UUID, or an index as the node lists its GPUs. Everything of the
    run (its sharing.gpu, hence its location, GPU monitor and MPS daemon) then names this one
    GPU. Without NVML an index is taken as given. One line if NVML does not list it."""
    by_uuid = gpu.by_uuid(name)
    if by_uuid is not None:
        return by_uuid.index
    try:
        index = int(name)
    except ValueError:
        raise RunFailure(f"the GPU assigned here, {name!r}, is neither an index nor a UUID NVML lists") from None
    if gpu.devices and gpu.device(index) is None:
        raise RunFailure(f"the GPU assigned here, {name!r}, is not among the {len(gpu.devices)} GPU(s) NVML lists")
    return index


def location_of(gpu: GpuInfo, node: str, gpu_index: int) -> Location:
    """A run's `Location` from what `environment.gpus()` read and the GPU the run used."""
    device = gpu.device(gpu_index)
    if device is None:  # every key said, null: the summary writes the keys it was given
        return Location(node=node, gpu_index=None, gpu_name=None, gpu_uuid=None, gpu_memory_mib=None)
    return Location(node=node, gpu_index=gpu_index, gpu_name=device.name, gpu_uuid=device.uuid,
                    gpu_memory_mib=device.memory_mib)


def run_location(folder: Path, summary: Summary) -> Location | None:
    """Where a run measured: its summary's `location`, or, for a run recorded before there was
    one, its env.json (host and devices) and config.yaml (sharing.gpu; GPU 0 where it does not
    read). None without env.json."""
    if summary.location is not None:
        return summary.location
    try:
        env = json.loads((folder / ENV).read_text())
    except (OSError, ValueError):
        return None
    config = read_run_config(folder)
    if not isinstance(env, dict) or not isinstance(env.get("host"), str):
        return None
    return location_of(GpuInfo.model_validate(env.get("gpu") or {}), env["host"], config.sharing.gpu if config else 0)


def read_run_config(folder: Path) -> ScenarioConfig | None:
    """The configuration a run ran (its config.yaml), typed; None where it is missing or no
    longer reads under this version's schema."""
    try:
        raw = load_yaml((folder / CONFIG).read_text())
        return parse_config(raw) if isinstance(raw, dict) else None
    except (OSError, ValueError, yaml.YAMLError, ConfigError):  # ValueError: not UTF-8
        return None


def workload_labels(config: ScenarioConfig | None) -> dict[str | None, str]:
    """Each tenant's workload label (the key None: a run without tenants), from its config."""
    if config is None:
        return {}
    return {tenant.name: tenant.workload.label for tenant in config.resolved_tenants()}
