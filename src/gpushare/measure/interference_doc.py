"""interference.json, typed: one writer and one reader, as results does for summary.json.

`interfere` writes one per --out folder: the metrics compared (from the catalogue), each
tenant's dedicated reference where one was run, and, per scenario (one per sharing mode), its
phases, each tenant's metrics alone and shared, each tenant's score and which quantity it is on,
the scenario's scores, its output over the interval every tenant loaded, each tenant's metrics
per step of its aggressor's load and a victim's per loaded level against solo. The isolation
tables, figures and the report read it back as an `InterferenceDoc`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError, create_model

from ..core.files import INTERFERENCE, write_json_atomic
from .interference import CommonThroughput, LevelComparison, ScenarioScores, TenantComparison
from .metric_catalog import METRICS, MetricSpec
from .results import Record, validation_problem

STEP_METRICS = ("p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "output_throughput",
                "good_request_fraction", "completed", "failed")
"""What the noisy-neighbour view keeps of each step: the victim's tail latencies and throughput."""


class InterferenceUnreadable(Exception):
    """interference.json is missing, not JSON, or not an interference document; the message names the file."""


class ComparedMetric(Record):
    """One of the metrics compared, as the catalogue declares it."""

    key: str
    label: str
    higher_is_better: bool

    @classmethod
    def of(cls, spec: MetricSpec) -> ComparedMetric:
        if spec.higher_is_better is None:
            raise ValueError(f"{spec.key}: the catalogue gives it no direction, so it cannot be compared")
        return cls(key=spec.key, label=spec.label, higher_is_better=spec.higher_is_better)


class PhaseEntry(Record):
    """A phase's run folder and whether it is complete (or why not)."""

    run_dir: str
    status: str


StepPoint: Any = create_model(
    "StepPoint", __base__=Record, __doc__="A tenant's STEP_METRICS over one step of its aggressor's load.",
    step=(int, ...), level=(float, ...), **{key: (METRICS[key].type | None, ...) for key in STEP_METRICS})


class StepSeries(Record):
    """A tenant's metrics per step of the schedule it is binned by (its aggressor's)."""

    aggressor: str | None
    kind: Literal["concurrency", "request_rate"]
    steps: list[StepPoint]


class ScenarioEntry(Record):
    """One scenario: its phases, and where every phase is complete, the comparison; else why not."""

    sharing_mode: str
    phases: dict[str, PhaseEntry]
    complete: bool
    error: str | None = None
    tenants: list[TenantComparison] = []
    scores: ScenarioScores | None = None
    slo_s: dict[str, dict[str, float]] = {}
    by_step: dict[str, StepSeries] = {}
    aggregate: CommonThroughput | None = None
    """The shared phase's output tok/s over the interval where every tenant loaded; None where
    the tenants' spans do not overlap (or in a file written before it was computed)."""
    levels: dict[str, list[LevelComparison]] = {}
    """Per victim (a tenant binned by another's step schedule): each metric at each loaded
    level of its aggressor against its solo value, the worst level marked."""


class DedicatedEntry(Record):
    """A tenant's dedicated reference: the scenario that ran it alone on a GPU of its own (its
    servers only, from the --dedicated config), its run folder and whether it is complete."""

    scenario: str
    run_dir: str
    status: str


class InterferenceDoc(Record):
    """interference.json: the metrics compared, and every scenario by name."""

    metrics: list[ComparedMetric]
    scenarios: dict[str, ScenarioEntry]
    dedicated: dict[str, DedicatedEntry] = {}
    """By tenant; empty where interfere ran without --dedicated."""


def write_interference_doc(out: Path, doc: InterferenceDoc) -> Path:
    """out/interference.json, atomically; only what was set is written (an incomplete scenario
    has no comparison), and what is written reads back as `doc`."""
    path = out / INTERFERENCE
    document = doc.model_dump(mode="json", exclude_unset=True)
    InterferenceDoc.model_validate(document)
    write_json_atomic(path, document)
    return path


def read_interference_doc(path: Path) -> InterferenceDoc:
    """An interference.json as an `InterferenceDoc`; InterferenceUnreadable names the file and why."""
    try:
        return InterferenceDoc.model_validate_json(path.read_text())
    except OSError as err:
        raise InterferenceUnreadable(f"{path}: not readable ({err})") from None
    except ValidationError as err:  # not JSON, too
        raise InterferenceUnreadable(f"{path}: {validation_problem(err)}") from None
