"""SLO capacity: the most load a tenant holds under its SLO, alone and beside its neighbours,
per scenario (one per sharing mode).

Per scenario, the servers start once; the searched tenant is probed alone (the others' servers
up and idle: the same placement) and then beside each neighbour level, each search a run of
measure.capacity_search over probes that are cells of the scenario's plan, so the matrix's
executors run them (here, --gpus, --ray), resume them and index them. The capacity alone
bounds the searches beside neighbours. Every probe is its own run folder, salted for the
prefix cache by its name, and capacity.json/csv are re-derived from those folders alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from ..config import CapacityConfig, ScenarioConfig, TenantConfig, parse_config
from ..errors import ConfigError
from ..measure.capacity_search import (GoalResult, Knob, NextProbe, Probe, SearchSpec, next_probe,
                                       requests_to_resolve, results)
from ..measure.capacity_doc import CapacityDoc, CapacityRow, ProbeEntry, write_capacity_doc
from ..measure.results import SummaryUnreadable, read_run
from .interference_protocol import phase_salt
from .matrix_plan import PlannedCell, ScenarioPlan

ALONE = "alone"
INCOMPLETE = "did not complete"
"""What a row's `why` says of a search stopped at a probe that did not complete."""


@dataclass(frozen=True)
class Neighbours:
    """One setting of the searched tenant's neighbours: each loading at its level, or none (alone)."""

    levels: tuple[tuple[str, float], ...] = ()

    @property
    def label(self) -> str:
        """As capacity.csv's `beside` column has it: "batch=16", or "" alone."""
        return ",".join(f"{name}={level:g}" for name, level in self.levels)

    @property
    def tag(self) -> str:
        """As a probe folder's name begins: "batch16", or "alone"."""
        return "_".join(f"{name}{level:g}" for name, level in self.levels) or ALONE


def knob_of(tenant: TenantConfig, config: ScenarioConfig) -> str:
    """What a tenant's level is: its rate on an open loop, its concurrency on a closed one."""
    return "request_rate" if (tenant.load or config.load).open_loop else "concurrency"


def level_of(tenant: TenantConfig, config: ScenarioConfig) -> float:
    load = tenant.load or config.load
    return float(load.request_rate if load.open_loop else load.concurrency)  # type: ignore[arg-type]


def probe_name(neighbours: Neighbours, kind: str, level: float, window: int) -> str:
    tag = ("r" if kind == "request_rate" else "c") + f"{level:g}"
    return f"{neighbours.tag}-{tag}" + (f"-w{2 ** window}" if window else "")


def parse_beside(items: list[str]) -> dict[str, list[float]]:
    """`--beside NAME=L1,L2` (repeatable) as levels per neighbour; one line naming the flag
    for a level that is not a number."""
    found: dict[str, list[float]] = {}
    for item in items:
        name, eq, levels = item.partition("=")
        if not eq or not levels:
            raise ConfigError(f"--beside: expected NAME=L1,L2,... (a neighbour's levels), not {item!r}")
        for part in levels.split(","):
            try:
                level = float(part)
            except ValueError:
                level = math.nan
            if not 0 < level < math.inf:
                raise ConfigError(f"--beside: {name}'s level {part!r} is not a number > 0 (in {item!r})")
            found.setdefault(name, []).append(level)
    return found


def neighbour_settings(beside: dict[str, list[float]], config: ScenarioConfig, tenant: str,
                       where: str) -> list[Neighbours]:
    """Each neighbour level to search beside, one neighbour loading at a time; none given:
    every other tenant at its configured load. `where` names the flag or key they came from."""
    names = [t.name for t in config.tenants]
    if not beside:
        return [Neighbours(tuple((t.name, level_of(t, config)) for t in config.tenants if t.name != tenant))]
    found = []
    for name, levels in beside.items():
        if name == tenant:
            raise ConfigError(f"{where}: {name} is the tenant searched; name one of its neighbours")
        if name not in names:
            raise ConfigError(f"{where}: scenario {config.scenario} has no tenant named '{name}' "
                              f"(tenants: {', '.join(names)})")
        neighbour = next(t for t in config.tenants if t.name == name)
        for level in levels:
            if knob_of(neighbour, config) == "concurrency" and level != int(level):
                raise ConfigError(f"{where}: {name} runs a closed loop; its level {level:g} is a concurrency, "
                                  "a whole number")
            found.append(Neighbours(((name, level),)))
    return found


def check_scenario(config: ScenarioConfig, tenant: str) -> TenantConfig:
    """The searched tenant, or one line saying why this scenario cannot be searched for it."""
    if not config.tenants:
        raise ConfigError(f"--configs: scenario {config.scenario} has no tenants: (name the searched tenant there)")
    if config.active_tenants is not None:
        raise ConfigError(f"--configs: scenario {config.scenario} sets active_tenants; the search chooses them")
    names = [t.name for t in config.tenants]
    if tenant not in names:
        raise ConfigError(f"--tenant: scenario {config.scenario} has no tenant named '{tenant}' "
                          f"(tenants: {', '.join(names)})")
    found = next(t for t in config.tenants if t.name == tenant)
    if (found.slo if found.slo is not None else config.slo) is None:
        raise ConfigError(f"--tenant: {tenant} has no SLO in scenario {config.scenario}; give it one "
                          "(tenants.N.slo, or the scenario's slo) to search its capacity under")
    if any((t.load or config.load).steps is not None for t in config.tenants):
        raise ConfigError(f"--configs: scenario {config.scenario}: a tenant's load has steps; the search sets "
                          "every level itself")
    return found


@dataclass(frozen=True)
class AloneBounds:
    """What a search alone found elsewhere (a plan's dedicated profile): its capacity and the
    lowest level found infeasible bound the searches beside neighbours, with no probe alone."""

    capacity: float | None
    first_infeasible: float | None


@dataclass(frozen=True)
class TenantSearch:
    """A scenario's searches for one tenant: alone (unless `alone` says what it found), then
    beside each neighbour setting, in that order, in one session of its servers (a
    matrix_plan.CellSearch)."""

    config: ScenarioConfig
    tenant: str
    settings: tuple[Neighbours, ...]
    options: CapacityConfig
    alone: AloneBounds | None = None
    prefix: str = ""
    """Begins its probes' names: several searches in one scenario (a SearchChain) apart."""
    beside_start: float | None = None
    """Where each search beside neighbours starts; default: the capacity alone (a plan's: the
    least capacity its target needs)."""

    def probe_name(self, neighbours: Neighbours, level: float, window: int) -> str:
        return self.prefix + probe_name(neighbours, self.kind, level, window)

    @property
    def kind(self) -> str:
        return knob_of(self._tenant, self.config)

    @property
    def _tenant(self) -> TenantConfig:
        return next(t for t in self.config.tenants if t.name == self.tenant)

    @property
    def targets(self) -> tuple[float, ...]:
        if self.options.targets is not None:
            return tuple(sorted(self.options.targets, reverse=True))
        slo = self._tenant.slo if self._tenant.slo is not None else self.config.slo
        assert slo is not None
        return (slo.attainment,)

    @property
    def budget(self) -> int:
        return self.options.budget * (len(self.settings) + (self.alone is None))

    def spec(self, ceiling: float | None = None, start: float | None = None) -> SearchSpec:
        """The search alone (its ceiling the option's), or beside neighbours (`ceiling`: the
        lowest level found infeasible alone; `start`: the capacity alone)."""
        options, kind = self.options, self.kind
        first = options.start or level_of(self._tenant, self.config)
        top = options.ceiling or 64 * first
        knob = Knob(kind, 1 if kind == "concurrency" else options.tolerance,  # type: ignore[arg-type]
                    floor=1 if kind == "concurrency" else float(f"{first / 64:.3g}"),
                    ceiling=top if ceiling is None else min(top, ceiling))
        return SearchSpec(knob, self.targets, start or first, options.budget)

    def probe(self, neighbours: Neighbours, wanted: NextProbe, folder: Path) -> PlannedCell:
        """The probe as a cell, run into folder/NAME (folder: the scenario's)."""
        name = self.probe_name(neighbours, wanted.level, wanted.window)
        config = probe_config(self.config, self.tenant, neighbours, wanted, self.options, folder / name, name)
        unit = "req/s" if self.kind == "request_rate" else "in flight"
        where = f"beside {neighbours.label}" if neighbours.levels else "alone"
        window = f", window x{2 ** wanted.window}" if wanted.window else ""
        label = f"probe {name}: {self.tenant} at {wanted.level:g} {unit} {where}{window}"
        # a probe's repeat is its window's multiple of the base window (probe_outcome reads it back)
        return PlannedCell(name, self.kind, wanted.level, 2 ** wanted.window, config, label)

    def walk(self, folder: Path, run: Callable[[PlannedCell], Probe | None]
             ) -> Iterator[tuple[Neighbours, SearchSpec, list[Probe], str | None]]:
        """Each search in order with its probes: `run` measures (or reads) one probe, None when
        it did not complete; a search stops at a probe that did not (its reason given)."""
        alone: list[GoalResult | AloneBounds] = [] if self.alone is None else [self.alone]
        for neighbours in self.settings if self.alone is not None else (Neighbours(), *self.settings):
            if not neighbours.levels:
                spec = self.spec()
            else:  # the loosest target's bound alone is the highest level worth probing beside
                bounds = [g.first_infeasible for g in alone]
                ceiling = None if not bounds or None in bounds else max(b for b in bounds if b is not None)
                start = self.beside_start or min((g.capacity for g in alone if g.capacity), default=None)
                spec = self.spec(ceiling, start)
            probes: list[Probe] = []
            failed = None
            while (wanted := next_probe(spec, probes)) is not None:
                cell = self.probe(neighbours, wanted, folder)
                outcome = run(cell)
                if outcome is None:
                    failed = f"probe {cell.name} {INCOMPLETE}"
                    break
                probes.append(outcome)
            if not neighbours.levels:
                alone = list(results(spec, probes))
            yield neighbours, spec, probes, failed

    def existing(self, folder: Path) -> list[PlannedCell]:
        """The probes this search asks for whose folders exist (for the book's check of settings)."""
        found: list[PlannedCell] = []

        def seen(cell: PlannedCell) -> Probe | None:
            if not (folder / cell.name).exists():
                return None
            found.append(cell)
            return probe_outcome(folder / cell.name, self.tenant, cell)

        for _ in self.walk(folder, seen):
            pass
        return found

    def cells(self, folder: Path, claim: Callable[[PlannedCell], bool]) -> Iterator[PlannedCell]:
        """The probes to run, each judged from its folder once it has run. walk() is pure, so
        it is replayed after each probe, the finished ones read from their folders, to reach
        the next; each probe is claimed from the book once."""
        decided: set[str] = set()
        pending: list[PlannedCell] = []

        def run(cell: PlannedCell) -> Probe | None:
            if cell.name not in decided:
                decided.add(cell.name)
                if claim(cell):
                    pending.append(cell)
                    return None
            return probe_outcome(folder / cell.name, self.tenant, cell)

        while True:
            pending.clear()
            for _ in self.walk(folder, run):
                if pending:
                    break
            if not pending:
                return
            cell = pending[0]
            yield cell
            if probe_outcome(folder / cell.name, self.tenant, cell) is None:
                return  # it did not complete: the search stops there, and capacity.json says why


@dataclass(frozen=True)
class SearchChain:
    """Several searches in one session of the same servers, one after another (a
    matrix_plan.CellSearch): a plan's profiles that differ only in their tenants' loads start the
    servers once. Each search's probes carry its own prefix."""

    searches: tuple[TenantSearch, ...]

    @property
    def budget(self) -> int:
        return sum(s.budget for s in self.searches)

    def existing(self, folder: Path) -> list[PlannedCell]:
        return [cell for search in self.searches for cell in search.existing(folder)]

    def cells(self, folder: Path, claim: Callable[[PlannedCell], bool]) -> Iterator[PlannedCell]:
        for search in self.searches:
            yield from search.cells(folder, claim)


def probe_config(config: ScenarioConfig, tenant: str, neighbours: Neighbours, wanted: NextProbe,
                 options: CapacityConfig, out: Path, name: str) -> ScenarioConfig:
    """The scenario with `tenant` at the probe's level and only the named neighbours loading at
    theirs; every loading tenant's window the same length, salted for the prefix cache by the
    probe (each probe sends the same prompts to the same servers)."""
    raw = config.model_dump(mode="json")
    levels = dict(neighbours.levels)
    seconds = probe_seconds(config, tenant, wanted, options)
    for i, entry in enumerate(raw["tenants"]):
        load = dict(entry["load"] or raw["load"])
        level = wanted.level if entry["name"] == tenant else levels.get(entry["name"])
        if level is not None:
            if load["request_rate"] is not None:
                load["request_rate"] = level
            else:
                load["concurrency"] = int(level)
        load.update(duration_s=options.settle_s + seconds, n_requests=None, steps=None, settle_s=options.settle_s)
        entry["load"] = load
        where = "api" if entry["api"] is None else f"tenants.{i}.api"
        api = dict(entry["api"] or raw["api"])
        api["extra_body"] = {**api["extra_body"],
                             "cache_salt": phase_salt(config.scenario, where, api["extra_body"], name)}
        entry["api"] = api
    raw.update(active_tenants=[tenant, *levels], out=str(out))
    return parse_config(raw)


def probe_seconds(config: ScenarioConfig, tenant: str, wanted: NextProbe, options: CapacityConfig) -> float:
    """A probe's measured seconds: at least the option's window, for an open loop long enough to
    hold the requests that can prove its strictest target (Poisson arrivals: three standard
    deviations over their mean, so that a window seldom falls short); doubled per longer window."""
    found = next(t for t in config.tenants if t.name == tenant)
    slo = found.slo if found.slo is not None else config.slo
    targets = options.targets or ((slo.attainment,) if slo is not None else (0.99,))
    seconds = options.window_s
    if knob_of(found, config) == "request_rate":
        needed = requests_to_resolve(max(targets))
        seconds = max(seconds, (needed + 3 * math.sqrt(needed)) / wanted.level)
    return seconds * 2 ** wanted.window


def probe_outcome(folder: Path, tenant: str, cell: PlannedCell) -> Probe | None:
    """A finished probe's good and measured requests, from its summary; None unless complete."""
    try:
        summary = read_run(folder)
    except SummaryUnreadable:
        return None
    if not summary.verdict.complete or summary.tenants is None or tenant not in summary.tenants:
        return None
    block = summary.tenants[tenant]
    window = int(math.log2(cell.repeat))
    return Probe(float(cell.load or 0), window, block.good_requests or 0, block.completed + block.failed)


def plan_capacity(configs: list[ScenarioConfig], flags: dict[str, object]) -> list[ScenarioPlan]:
    """Per scenario, its searches (its `capacity:` block, each key overridden by the flag
    given for it): a plan for the matrix's executors."""
    plan = []
    for config in configs:
        options = (config.capacity or CapacityConfig()).model_copy(update={k: v for k, v in flags.items()
                                                                          if v is not None})
        if options.tenant is None:
            raise ConfigError(f"--tenant: name the tenant to search (or capacity.tenant in scenario {config.scenario})")
        if options.start is not None and options.ceiling is not None and options.start > options.ceiling:
            raise ConfigError(f"--start: {options.start:g} is above --ceiling {options.ceiling:g}")
        check_scenario(config, options.tenant)
        where = "--beside" if flags.get("beside") else "capacity.beside"
        settings = tuple(neighbour_settings(options.beside, config, options.tenant, where))
        plan.append(ScenarioPlan(config, [], TenantSearch(config.model_copy(update={"capacity": None}),
                                                          options.tenant, settings, options)))
    return plan


def search_rows(search: TenantSearch, folder: Path) -> tuple[list[CapacityRow], list[ProbeEntry]]:
    """A scenario's capacity rows and probes, re-derived from its probe folders alone."""
    config, rows, entries = search.config, [], []
    alone: dict[float, float | None] = {}

    def read(cell: PlannedCell) -> Probe | None:
        return probe_outcome(folder / cell.name, search.tenant, cell)

    for neighbours, spec, probes, failed in search.walk(folder, read):
        for probe in probes:
            low, high = probe.interval
            name = search.probe_name(neighbours, probe.level, probe.window)
            entries.append(ProbeEntry(scenario=config.scenario, beside=neighbours.label, level=probe.level,
                                      window=2 ** probe.window, good=probe.good, total=probe.total,
                                      attainment=probe.attainment, wilson_low=low, wilson_high=high,
                                      judged={f"{t:g}": probe.judged(t) for t in spec.targets},
                                      run_dir=str(folder / name)))
        for result in results(spec, probes):
            if failed is not None:
                result = replace(result, resolved=False, why=f"{failed}; {result.why}")
            if not neighbours.levels:
                alone[result.target] = result.capacity
            base = alone.get(result.target)
            kept = (result.capacity / base if neighbours.levels and base and result.capacity is not None else None)
            rows.append(CapacityRow(
                scenario=config.scenario, sharing_mode=config.sharing.mode, tenant=search.tenant,
                knob=search.kind, beside=neighbours.label, target=result.target,  # type: ignore[arg-type]
                capacity=result.capacity if probes else None, first_infeasible=result.first_infeasible,
                **_at("capacity", result.at_capacity), **_at("first_infeasible", result.at_first_infeasible),
                binding=_binding(folder, neighbours, search, result.at_first_infeasible),
                probes=len(probes), resolved=result.resolved, why=result.why,
                non_monotone=list(result.non_monotone), capacity_kept=kept,
                capacity_run_dir=_run_dir(folder, neighbours, search, result.at_capacity),
                first_infeasible_run_dir=_run_dir(folder, neighbours, search, result.at_first_infeasible)))
    return rows, entries


def _at(where: str, probe: Probe | None) -> dict[str, float | None]:
    low, high = probe.interval if probe is not None else (None, None)
    return {f"attainment_at_{where}": probe.attainment if probe else None,
            f"wilson_low_at_{where}": low, f"wilson_high_at_{where}": high}


def _run_dir(folder: Path, neighbours: Neighbours, search: TenantSearch, probe: Probe | None) -> str | None:
    if probe is None:
        return None
    return str(folder / search.probe_name(neighbours, probe.level, probe.window))


def _binding(folder: Path, neighbours: Neighbours, search: TenantSearch, probe: Probe | None) -> str | None:
    """The bound most requests missed at the first infeasible level (failed requests: `failed`)."""
    run_dir = _run_dir(folder, neighbours, search, probe)
    if run_dir is None:
        return None
    block = read_run(Path(run_dir)).tenants[search.tenant]  # type: ignore[index]
    missed = {**(block.slo_misses or {}), "failed": block.failed}
    worst = max(missed.items(), key=lambda item: item[1], default=(None, 0))
    return worst[0] if worst[1] else None


def write_capacity(plan: list[ScenarioPlan], out: Path) -> CapacityDoc:
    """capacity.json, capacity.csv and capacity_probes.csv from the plan's probe folders."""
    rows: list[CapacityRow] = []
    entries: list[ProbeEntry] = []
    searches: dict[str, CapacityConfig] = {}
    for scenario in plan:
        assert isinstance(scenario.search, TenantSearch)
        searches[scenario.config.scenario] = scenario.search.options
        found_rows, found_probes = search_rows(scenario.search, out / scenario.config.scenario)
        rows += found_rows
        entries += found_probes
    doc = CapacityDoc(searches=searches, rows=rows, probes=entries)
    write_capacity_doc(out, doc)
    return doc


def kept_beside_configured(doc: CapacityDoc, config: ScenarioConfig) -> dict[str, float]:
    """Per tenant searched in this scenario, the capacity it kept beside its neighbours at their
    configured loads (those of an interference run's shared phase), at its SLO's own target:
    what `interfere --capacity` scores an open-loop tenant on."""
    kept: dict[str, float] = {}
    for tenant in config.tenants:
        slo = tenant.slo if tenant.slo is not None else config.slo
        if slo is None or not (tenant.load or config.load).open_loop:
            continue
        (configured,) = neighbour_settings({}, config, tenant.name, "--capacity")
        for row in doc.rows:
            if (row.scenario, row.tenant, row.beside, row.target) == (config.scenario, tenant.name, configured.label,
                                                                      slo.attainment) and row.capacity_kept is not None:
                kept[tenant.name] = row.capacity_kept
    return kept
