"""The interference protocol: what each tenant gets alone, and what it gets shared.

For each scenario, its servers start once; then every tenant runs alone (the others' servers
up and idle: the same placement), and then all tenants run together, each phase its own run
folder with the same tenants, seeds and window lengths. Only phases of one scenario are
compared, so solo and shared differ in one thing: the neighbours' load. With a dedicated
reference (--dedicated), each tenant also runs alone on a GPU of its own: the reference config
narrowed to that tenant and the servers it names, so a packing's cost can be stated against
giving every tenant its own GPU. The phases are cells of a plan run by the matrix's executor,
so resume, server reuse and the index come with it.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..config import ScenarioConfig, parse_config
from ..core.files import INTERFERENCE_CSV, INTERFERENCE_LEVELS, INTERFERENCE_SCORES, INTERFERENCE_TENANTS
from ..core.records import RequestRecord
from ..errors import ConfigError
from ..load.request_log import read_request_log
from ..measure.interference import (INTERFERENCE_METRICS, LEVEL_METRICS, CommonThroughput, LevelComparison, Rates,
                                    StepValue, TenantPhases, common_output_throughput, compare_tenants, loaded_levels,
                                    rows_for_csv, score_scenario)
from ..measure.interference_doc import (STEP_METRICS, ComparedMetric, DedicatedEntry, InterferenceDoc, PhaseEntry,
                                        ScenarioEntry, StepPoint, StepSeries, write_interference_doc)
from ..measure.results import Summary, SummaryUnreadable, TenantBlock, read_run
from .matrix_plan import PlannedCell, ScenarioPlan, load_scenarios

SHARED = "shared"
DEDICATED = "dedicated"
"""The one cell of a tenant's dedicated scenario: the tenant alone, its servers the only ones."""


def solo_cell(tenant: str) -> str:
    return f"solo-{tenant}"


@dataclass(frozen=True)
class InterferencePlan:
    """The scenarios compared (each tenant alone, then all together), and each tenant's
    dedicated scenario where a reference was asked for (by tenant)."""

    scenarios: list[ScenarioPlan]
    dedicated: dict[str, ScenarioPlan] = field(default_factory=dict)

    @property
    def plans(self) -> list[ScenarioPlan]:
        """Everything to run, the compared scenarios first."""
        return [*self.scenarios, *self.dedicated.values()]


def plan_interference(configs: list[ScenarioConfig], dedicated: ScenarioConfig | None = None) -> InterferencePlan:
    """Per scenario: each tenant alone, then all together; with `dedicated`, each tenant of
    theirs alone in its own narrowing of that config."""
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
    return InterferencePlan(plan, {} if dedicated is None else plan_dedicated(dedicated, configs))


def read_dedicated(path: Path, model: str | None) -> ScenarioConfig:
    """The --dedicated config; a problem with it is one line naming the flag."""
    try:
        (config,) = load_scenarios([path], model)
    except ConfigError as err:
        raise ConfigError(f"--dedicated: {str(err).removeprefix('--config: ')}") from None
    return config


SAME_REQUESTS = ("workload", "load", "slo", "seed")
"""What a tenant's dedicated run must share with the scenarios it is the reference of: the same
requests, offered the same way and judged by the same SLO."""


def plan_dedicated(reference: ScenarioConfig, configs: list[ScenarioConfig]) -> dict[str, ScenarioPlan]:
    """Each tenant of `configs`, alone in `reference` narrowed to it and its servers (so it has
    the GPU to itself), as a scenario of one cell; ConfigError (naming --dedicated) where the
    reference lacks a tenant, runs it differently, or a narrowed scenario's name is taken."""
    where = f"--dedicated: scenario {reference.scenario}"
    if not reference.tenants:
        raise ConfigError(f"{where} has no tenants (tenants:); it must hold the tenants of --configs")
    if reference.active_tenants is not None:
        raise ConfigError(f"{where} sets active_tenants; the protocol chooses them")
    mine = {t.name: t for t in reference.resolved_tenants()}
    plans: dict[str, ScenarioPlan] = {}
    for config in configs:
        for tenant in config.resolved_tenants():
            assert tenant.name is not None  # interference scenarios have tenants
            ref = mine.get(tenant.name)
            if ref is None:
                raise ConfigError(f"{where} has no tenant {tenant.name}, which scenario {config.scenario} has "
                                  f"(its tenants: {', '.join(mine)})")
            differs = [key for key in SAME_REQUESTS if getattr(ref, key) != getattr(tenant, key)]
            if reference.model != config.model:
                differs.insert(0, "model")
            if differs:
                raise ConfigError(f"{where}: tenant {tenant.name} differs from scenario {config.scenario}'s in "
                                  f"{', '.join(differs)}; its dedicated run must send the same requests")
            if tenant.name not in plans:
                alone = narrowed(reference, tenant.name)
                plans[tenant.name] = ScenarioPlan(alone, [PlannedCell(DEDICATED, "phase", None, 1,
                                                                      phase_config(alone, DEDICATED, None))])
    taken = {c.scenario for c in configs} & {p.config.scenario for p in plans.values()}
    if taken:
        raise ConfigError(f"--dedicated: scenario name {', '.join(sorted(taken))} (the reference narrowed to one "
                          "tenant) is also one of --configs; rename either scenario")
    return plans


def narrowed(config: ScenarioConfig, tenant: str) -> ScenarioConfig:
    """The scenario `config`-`tenant`: only that tenant and the servers it names, every server
    keeping the name the tenant knows it by."""
    raw = config.model_dump(mode="json")
    names = config.server_names()
    (kept,) = [t for t in raw["tenants"] if t["name"] == tenant]
    raw["servers"] = [{**server, "name": name} for server, name in zip(raw["servers"], names)
                      if name in kept["servers"]]
    raw["tenants"] = [kept]
    raw["scenario"] = f"{config.scenario}-{tenant}"
    try:
        return parse_config(raw)
    except ConfigError as err:
        raise ConfigError(f"--dedicated: scenario {config.scenario} narrowed to tenant {tenant}: {err}") from None


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


def scenario_interference(config: ScenarioConfig, folder: Path, dedicated: Mapping[str, TenantBlock] | None = None,
                          capacity_kept: Mapping[str, float] | None = None) -> ScenarioEntry:
    """One scenario's comparison from its phase folders; incomplete phases are named, and
    no number is given that would need one. `dedicated`: the tenants' blocks from their
    complete dedicated runs; `capacity_kept`: tenants scored on capacity (score_scenario)."""
    names = [t.name for t in config.tenants]
    phases = {cell: _phase(folder / cell) for cell in [*map(solo_cell, names), SHARED]}
    entry: dict[str, Any] = {
        "sharing_mode": config.sharing.mode,
        "phases": {cell: PhaseEntry(run_dir=str(folder / cell), status=status) for cell, (_, status) in phases.items()},
    }
    summaries = {cell: summary for cell, (summary, _) in phases.items()}
    missing = [cell for cell, summary in summaries.items() if summary is None]
    if missing:
        return ScenarioEntry(**entry, complete=False, error=f"phase(s) not complete: {', '.join(missing)}")
    solo = {name: summaries[solo_cell(name)].tenants[name] for name in names}  # type: ignore[union-attr,index]
    shared = {name: summaries[SHARED].tenants[name] for name in names}  # type: ignore[union-attr,index]
    reference = dedicated or {}
    # interference's pure functions compare each tenant's flat keys
    solo_metrics = {name: block.model_dump() for name, block in solo.items()}
    shared_metrics = {name: block.model_dump() for name, block in shared.items()}
    tenants = {name: TenantPhases(open_loop=shared[name].load.open_loop, has_slo=bool(shared[name].slo_s),
                                  solo=Rates.of(solo[name]), shared=Rates.of(shared[name]),
                                  dedicated=Rates.of(reference[name]) if name in reference else None)
               for name in names}
    return ScenarioEntry(
        **entry, complete=True, tenants=compare_tenants(solo_metrics, shared_metrics),
        scores=score_scenario(tenants, capacity_kept), slo_s={name: shared[name].slo_s for name in names},
        by_step={name: StepSeries(aggressor=block.by_step.tenant, kind=block.by_step.kind,
                                  steps=[StepPoint(step=s.step, level=s.level, **s.pick(STEP_METRICS))
                                         for s in block.by_step.steps])
                 for name, block in shared.items() if block.by_step is not None},
        aggregate=shared_aggregate(folder / SHARED),
        levels={name: victim_levels(solo[name], block) for name, block in shared.items()
                if block.by_step is not None and block.by_step.tenant not in (None, name)})


def shared_aggregate(phase: Path) -> CommonThroughput | None:
    """The shared phase's output over the interval every tenant loaded, from its request log;
    None where the log does not read."""
    try:
        records = read_request_log(phase)
    except (OSError, ValueError, KeyError):  # missing, or not the log's columns
        return None
    return common_output_throughput(by_tenant(records))


def by_tenant(records: Iterable[RequestRecord]) -> dict[str, list[RequestRecord]]:
    out: defaultdict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        out[record.tenant or ""].append(record)
    return dict(out)


def victim_levels(solo: TenantBlock, shared: TenantBlock) -> list[LevelComparison]:
    """A victim's LEVEL_METRICS at each loaded step of its aggressor against its solo value."""
    assert shared.by_step is not None
    steps = shared.by_step.steps
    return [row for metric in LEVEL_METRICS
            for row in loaded_levels(metric, getattr(solo, metric.key),
                                     [StepValue(s.step, s.level, getattr(s, metric.key)) for s in steps])]


def dedicated_references(plan: InterferencePlan, out: Path) -> tuple[dict[str, DedicatedEntry], dict[str, TenantBlock]]:
    """Each tenant's dedicated run as the doc names it, and the tenant's block where it is complete."""
    entries, blocks = {}, {}
    for tenant, scenario in plan.dedicated.items():
        folder = out / scenario.config.scenario / DEDICATED
        summary, status = _phase(folder)
        entries[tenant] = DedicatedEntry(scenario=scenario.config.scenario, run_dir=str(folder), status=status)
        if summary is not None and summary.tenants is not None and tenant in summary.tenants:
            blocks[tenant] = summary.tenants[tenant]
    return entries, blocks


SCORE_COLUMNS = ["scenario", "sharing_mode", "tenants", "fairness", "stp", "fairness_vs_dedicated", "stp_vs_dedicated",
                 "common_output_throughput", "common_interval_s", "common_output_tokens", "token_times"]
TENANT_COLUMNS = ["scenario", "sharing_mode", "tenant", "scored_on", "solo", "shared", "kept", "dedicated",
                  "kept_vs_dedicated", "reason"]
LEVEL_COLUMNS = ["scenario", "sharing_mode", "tenant", "aggressor", "metric", "step", "level", "solo", "shared",
                 "slowdown", "worst"]


def _write_csv(path: Path, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def score_rows(doc: InterferenceDoc) -> Iterable[dict[str, Any]]:
    """interference_scores.csv: one row per complete scenario."""
    for name, entry in doc.scenarios.items():
        if entry.scores is None:
            continue
        scores, common = entry.scores, entry.aggregate
        yield {"scenario": name, "sharing_mode": entry.sharing_mode, "tenants": scores.tenants,
               "fairness": scores.fairness, "stp": scores.stp, "fairness_vs_dedicated": scores.fairness_vs_dedicated,
               "stp_vs_dedicated": scores.stp_vs_dedicated,
               "common_output_throughput": None if common is None else common.output_throughput,
               "common_interval_s": None if common is None else common.interval_s,
               "common_output_tokens": None if common is None else common.output_tokens,
               "token_times": None if common is None else common.token_times}


def write_interference(plan: InterferencePlan, out: Path,
                       capacity_kept: Mapping[str, Mapping[str, float]] | None = None) -> InterferenceDoc:
    """interference.json (every scenario: phases, per-tenant comparison, scores, the victim's
    latency per aggressor step and per loaded level; the dedicated references), interference.csv
    (one row per scenario, tenant and metric), interference_tenants.csv (one row per scenario and
    tenant: the quantity it was scored on and the share it kept), interference_scores.csv (one
    row per complete scenario: fairness, STP, output over the interval every tenant loaded) and
    interference_levels.csv (per victim, metric and loaded level of its aggressor).
    `capacity_kept` (per scenario, per tenant) scores open-loop tenants on capacity kept."""
    dedicated, blocks = dedicated_references(plan, out)
    doc = InterferenceDoc(
        metrics=[ComparedMetric.of(m) for m in INTERFERENCE_METRICS],
        scenarios={p.config.scenario: scenario_interference(p.config, out / p.config.scenario, blocks,
                                                            (capacity_kept or {}).get(p.config.scenario))
                   for p in plan.scenarios},
        **({"dedicated": dedicated} if dedicated else {}),
    )
    write_interference_doc(out, doc)
    scenarios = list(doc.scenarios.items())
    _write_csv(out / INTERFERENCE_CSV, ["scenario", "sharing_mode", "tenant", "metric", "solo", "shared", "slowdown"],
               ({"scenario": name, "sharing_mode": entry.sharing_mode, **row}
                for name, entry in scenarios for row in rows_for_csv(entry.tenants)))
    _write_csv(out / INTERFERENCE_TENANTS, TENANT_COLUMNS,
               ({"scenario": name, "sharing_mode": entry.sharing_mode, "tenant": tenant, **score.model_dump()}
                for name, entry in scenarios if entry.scores is not None
                for tenant, score in entry.scores.scored.items()))
    _write_csv(out / INTERFERENCE_SCORES, SCORE_COLUMNS, score_rows(doc))
    _write_csv(out / INTERFERENCE_LEVELS, LEVEL_COLUMNS,
               ({"scenario": name, "sharing_mode": entry.sharing_mode, "tenant": tenant,
                 "aggressor": entry.by_step[tenant].aggressor, **row.model_dump()}
                for name, entry in scenarios for tenant, rows in entry.levels.items() for row in rows))
    return doc
