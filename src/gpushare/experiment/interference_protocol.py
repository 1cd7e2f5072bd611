"""The interference protocol: what each tenant gets alone, and what it gets shared.

For each scenario, its servers start once; then every tenant runs alone (the others' servers
up and idle: the same placement), and then all tenants run together, each phase its own run
folder with the same tenants, seeds and window lengths. Only phases of one scenario are
compared, so solo and shared differ in one thing: the neighbours' load. The phases are cells
of a plan run by the matrix's executor, so resume, server reuse and the index come with it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..config import ScenarioConfig, parse_config
from ..core.files import write_json_atomic
from ..errors import ConfigError
from ..measure.interference import (
    INTERFERENCE_METRICS,
    compare_tenants,
    rows_for_csv,
    score_scenario,
    scores_dict,
)
from ..measure.results import Summary, SummaryUnreadable, read_run
from .matrix import PlannedCell, ScenarioPlan

SHARED = "shared"
# What the noisy-neighbour view keeps of each step: the victim's tail latencies and throughput.
STEP_METRICS = ("p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "output_throughput",
                "good_request_fraction", "completed", "failed")


def solo_cell(tenant: str) -> str:
    return f"solo-{tenant}"


def plan_interference(configs: list[ScenarioConfig]) -> list[ScenarioPlan]:
    """Per scenario: each tenant alone, then all together."""
    plan = []
    for config in configs:
        if len(config.tenants) < 2:
            raise ConfigError(f"--configs: scenario {config.scenario} has {len(config.tenants)} tenant(s); "
                              "interference needs two or more (tenants:)")
        if config.active_tenants is not None:
            raise ConfigError(f"--configs: scenario {config.scenario} sets active_tenants; the protocol chooses them")
        cells = [PlannedCell(solo_cell(t.name), "phase", None, 1, phase_config(config, solo_cell(t.name), [t.name]))
                 for t in config.tenants]
        plan.append(ScenarioPlan(config, [*cells, PlannedCell(SHARED, "phase", None, 1,
                                                              phase_config(config, SHARED, None))]))
    return plan


def phase_config(config: ScenarioConfig, phase: str, active: list[str] | None) -> ScenarioConfig:
    """The scenario with only `active` tenants loading (None: all), every tenant's prefix cache
    salted by phase (vLLM's `cache_salt`). Phases send the same requests to the same servers,
    so without the salt a later phase would find an earlier one's prompts in the prefix cache
    and skip their prefill, and shared would look faster than solo for that reason alone."""
    raw = config.model_dump(mode="json")
    for i, tenant in enumerate(raw["tenants"]):
        where = "api" if tenant["api"] is None else f"tenants.{i}.api"
        api = dict(tenant["api"] or raw["api"])
        api["extra_body"] = {**api["extra_body"],
                             "cache_salt": phase_salt(config.scenario, where, api["extra_body"], phase)}
        tenant["api"] = api
    raw["active_tenants"] = active
    return parse_config(raw)


def phase_salt(scenario: str, where: str, extra_body: dict[str, Any], phase: str) -> str:
    """The phase's cache salt, after the user's own `cache_salt` where `where` sets one: the
    user's keeps this run's cache apart from others', the phase's keeps the phases apart, so
    neither may replace the other."""
    salt = f"{scenario}-{phase}"
    user = extra_body.get("cache_salt")
    if user is None:
        return salt
    if not isinstance(user, str) or not user:
        raise ConfigError(f"--configs: scenario {scenario}: {where}.extra_body.cache_salt must be a non-empty "
                          f"string (got {user!r})")
    return f"{user}-{salt}"


def _phase(folder: Path) -> tuple[Summary | None, str]:
    """A phase's summary if the phase is complete, else None and why."""
    try:
        summary = read_run(folder)
    except SummaryUnreadable as err:
        return None, str(err)
    verdict = summary.verdict
    return (summary, "complete") if verdict.complete else (None, verdict.reason)


def scenario_interference(config: ScenarioConfig, folder: Path) -> dict[str, Any]:
    """One scenario's comparison from its phase folders; incomplete phases are named, and
    no number is given that would need one."""
    names = [t.name for t in config.tenants]
    phases = {cell: _phase(folder / cell) for cell in [*map(solo_cell, names), SHARED]}
    entry: dict[str, Any] = {
        "sharing_mode": config.sharing.mode,
        "phases": {cell: {"run_dir": str(folder / cell), "status": status} for cell, (_, status) in phases.items()},
    }
    summaries = {cell: summary for cell, (summary, _) in phases.items()}
    missing = [cell for cell, summary in summaries.items() if summary is None]
    if missing:
        entry["complete"] = False
        entry["error"] = f"phase(s) not complete: {', '.join(missing)}"
        return entry
    solo = {name: summaries[solo_cell(name)].tenants[name] for name in names}  # type: ignore[union-attr,index]
    shared = {name: summaries[SHARED].tenants[name] for name in names}  # type: ignore[union-attr,index]
    # interference's pure functions compare each tenant's flat keys
    solo_metrics = {name: block.model_dump() for name, block in solo.items()}
    shared_metrics = {name: block.model_dump() for name, block in shared.items()}
    entry["complete"] = True
    entry["tenants"] = rows_for_csv(compare_tenants(solo_metrics, shared_metrics))
    entry["scores"] = scores_dict(score_scenario(solo_metrics, shared_metrics))
    entry["slo_s"] = {name: shared[name].slo_s for name in names}
    entry["by_step"] = {
        name: {"aggressor": block.by_step.tenant, "kind": block.by_step.kind,
               "steps": [{"step": s.step, "level": s.level, **s.pick(STEP_METRICS)} for s in block.by_step.steps]}
        for name, block in shared.items() if block.by_step is not None
    }
    return entry


def write_interference(plan: list[ScenarioPlan], out: Path) -> dict[str, Any]:
    """interference.json (every scenario: phases, per-tenant comparison, scores, the victim's
    latency per aggressor step), interference.csv (one row per scenario, tenant and metric) and
    interference_scores.csv (one row per complete scenario: fairness, STP, aggregate tok/s)."""
    doc = {
        "metrics": [{"key": m.key, "label": m.label, "higher_is_better": m.higher_is_better}
                    for m in INTERFERENCE_METRICS],
        "scenarios": {p.config.scenario: scenario_interference(p.config, out / p.config.scenario) for p in plan},
    }
    write_json_atomic(out / "interference.json", doc)
    columns = ["scenario", "sharing_mode", "tenant", "metric", "solo", "shared", "slowdown"]
    tmp = out / ".interference.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for name, entry in doc["scenarios"].items():
            for row in entry.get("tenants", []):
                writer.writerow({"scenario": name, "sharing_mode": entry["sharing_mode"], **row})
    tmp.replace(out / "interference.csv")
    score_columns = ["scenario", "sharing_mode", "tenants", "fairness", "stp", "aggregate_output_throughput",
                     "solo_output_throughput_sum"]
    tmp = out / ".interference_scores.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, score_columns, extrasaction="ignore")
        writer.writeheader()
        for name, entry in doc["scenarios"].items():
            if entry["complete"]:
                writer.writerow({"scenario": name, "sharing_mode": entry["sharing_mode"], **entry["scores"]})
    tmp.replace(out / "interference_scores.csv")
    return doc
