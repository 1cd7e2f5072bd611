"""`gpushare plan`: the fewest GPUs that hold every tenant's target under its SLO, recommended
from measured capacities and proven by measured runs.

Three stages, each a plan of scenarios for the matrix's executors, so each resumes:
1. profile: the capacities the packing model needs (measure.packing.missing_profiles), each a
   capacity search (experiment.capacity) in the profile store, measured only where the store
   lacks it: first every tenant alone on a whole GPU, then each pair that could share one;
2. search: measure.packing.solve over those capacities;
3. prove: every GPU of the packing runs as one scenario, its tenants together at their
   targets; a GPU is proven when each of its tenants meets its attainment target. A refuted
   GPU goes back to the store and the packing is searched again, until every GPU is proven or
   no packing is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

from ..config import CapacityConfig, ScenarioConfig, parse_config
from ..environment import engines
from ..errors import ConfigError
from ..measure.capacity_search import least_level_holding, wilson
from ..measure.packing import (DEDICATED, AloneKey, BesideKey, Demand, GpuAssignment, GpuKind, GroupKey, Packing,
                               PackingProblem, Profiles, Slice, Unplaceable, missing_profiles)
from ..measure.packing_search import solve
from ..measure.plan_doc import (GpuDoc, PlanDoc, ProfileEntry, ProfileUse, ProofRecord, SeatDoc, add_proofs, fingerprint,
                                profile_path, read_profile, read_proofs, write_plan_doc,
                                write_profile)
from ..measure.results import SummaryUnreadable, read_run
from ..plan_config import FleetGpus, PlanConfig, PlanTenant
from .capacity import INCOMPLETE, AloneBounds, Neighbours, SearchChain, TenantSearch, search_rows
from .interference_protocol import phase_salt
from .matrix_plan import PlannedCell, ScenarioPlan

PROOF = "proof"
"""A proof scenario's one cell."""
SEARCHED, BESIDE = "tenant", "neighbour"
"""The tenants' names in a profile's scenario: what it measures must not depend on names."""
MAX_ROUNDS = 4

RunStage = Callable[[list[ScenarioPlan], Path], int]
"""Runs a stage's scenarios into a folder with the command's executor; its exit code."""


class PlanStopped(Exception):
    """A stage did not finish (a signal, or a run that failed): rerun to resume."""

    def __init__(self, code: int, why: str):
        super().__init__(why)
        self.code = code


# --- what a tenant is, independent of its name ------------------------------------------------

def server_template(plan: PlanConfig, model: str) -> dict[str, Any]:
    server = plan.models[model]
    doc = server.model_dump(mode="json", exclude={"name", "port", "tenant", "mig_profile", "mig_device"})
    doc["model"] = server.model or model
    return doc


def engine_version(plan: PlanConfig, model: str) -> str:
    server = plan.models[model]
    if server.engine != "vllm" or server.command is not None:
        return server.engine if server.command is None else "command:" + " ".join(server.command[:3])
    return installed_vllm()


@cache
def installed_vllm() -> str:
    """The vLLM a launched server runs, read once: every profile key and fingerprint names it."""
    found = engines()["vllm"]
    return "vllm " + (found["version"] if found else "not installed")


def tenant_spec(plan: PlanConfig, tenant: PlanTenant, with_target: bool) -> dict[str, Any]:
    """What a tenant serves and sends (and, for a group's proof, at what load)."""
    load = tenant.load.model_dump(mode="json", include={"request_rate", "concurrency", "burstiness"})
    doc = {"server": server_template(plan, tenant.model), "engine": engine_version(plan, tenant.model),
           "workload": tenant.workload.model_dump(mode="json"), "slo": tenant.slo.model_dump(mode="json"),
           "api": (tenant.api or plan.api).model_dump(mode="json"),
           "open_loop": tenant.load.open_loop, "burstiness": load["burstiness"]}
    return {**doc, "target": tenant.target} if with_target else doc


# --- scenarios ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """A tenant as it runs in one scenario: its name there, its slice, its load."""

    name: str
    tenant: PlanTenant
    slice: str | None
    level: float


def gpu_scenario(plan: PlanConfig, scenario: str, gpu: FleetGpus, placement: str, members: list[Member],
                 seconds: float, settle_s: float, out: Path) -> ScenarioConfig:
    """One GPU's tenants under a placement: one server for them all (engine, or a tenant alone),
    else a server each (in its slice where the placement partitions)."""
    one_server = placement in ("engine", DEDICATED) or (len(members) == 1 and placement in ("timeslice", "mps"))
    mode = {"timeslice": "timeslice", "mps": "mps", "mig_emulation": "mig_emulation", "mig": "mig"}.get(placement)
    servers, tenants = [], []
    for i, member in enumerate(members):
        if one_server and i:
            server_name = servers[0]["name"]
        else:
            server = dict(server_template(plan, member.tenant.model), name=f"{member.name}-server")
            if member.slice is not None:
                server["mig_profile"] = member.slice
            if server["gpu_memory_utilization"] is None and not one_server and server["engine"] == "vllm" \
                    and mode in ("timeslice", "mps"):
                server["gpu_memory_utilization"] = round(0.9 / len(members), 2)
            servers.append(server)
            server_name = server["name"]
        load = member.tenant.load.model_dump(mode="json")
        load[("request_rate" if member.tenant.load.open_loop else "concurrency")] = (
            member.level if member.tenant.load.open_loop else int(member.level))
        load.update(duration_s=settle_s + seconds, n_requests=None, settle_s=settle_s)
        api = (member.tenant.api or plan.api).model_dump(mode="json")
        api["extra_body"] = {**api["extra_body"], "cache_salt": phase_salt(scenario, member.name, api["extra_body"],
                                                                           "plan")}
        tenants.append({"name": member.name, "servers": [server_name], "load": load, "api": api,
                        "workload": member.tenant.workload.model_dump(mode="json"),
                        "slo": member.tenant.slo.model_dump(mode="json")})
    memory = {} if gpu.memory_gib is None else {"memory_headroom_gib": 0.0}
    raw = {"scenario": scenario, "model": servers[0]["model"], "servers": servers, "tenants": tenants,
           "sharing": {"mode": mode if mode and not one_server else "baseline", **memory},
           "seed": plan.seed, "out": str(out)}
    return parse_config(raw)


# --- profiles -----------------------------------------------------------------------------------

class Fleet:
    """The plan's tenants and GPUs, with the profile store's entries found so far."""

    def __init__(self, plan: PlanConfig, store: Path):
        self.plan, self.store = plan, store
        self.gpus = {g.gpu: g for g in plan.fleet}
        self.entries: dict[str, ProfileEntry] = {}

    def search_options(self, start: float) -> CapacityConfig:
        return self.plan.profile.model_copy(update={"start": self.plan.profile.start or start})

    def key(self, wanted: AloneKey | BesideKey) -> dict[str, Any]:
        """What the entry measures: a tenant's spec, the GPU, placement, slice, neighbour, search."""
        tenant = self.plan.tenant(wanted.tenant)
        doc: dict[str, Any] = {"tenant": tenant_spec(self.plan, tenant, False), "gpu": wanted.gpu,
                               "placement": wanted.placement}
        # alone or beside, a search starts at the least capacity that holds the target after the margin
        needed = least_level_holding("request_rate" if tenant.load.open_loop else "concurrency", tenant.target,
                                     1 - self.plan.margin)
        doc["search"] = self.search_options(needed).model_dump(mode="json")
        if isinstance(wanted, AloneKey):
            doc["slice"] = wanted.slice
        else:
            doc["neighbour"] = tenant_spec(self.plan, self.plan.tenant(wanted.neighbour), True)
            alone = self.entry(AloneKey(wanted.tenant, wanted.gpu, DEDICATED, None))
            assert alone is not None, "a pair is measured once its tenant's dedicated capacity is known"
            doc["alone"] = {"capacity": alone.capacity, "first_infeasible": alone.first_infeasible}
        return doc

    def entry(self, wanted: AloneKey | BesideKey) -> ProfileEntry | None:
        """The store's entry; None where it has none (a pair: nor its tenant's dedicated one)."""
        found = self.entries.get(str(wanted))
        if isinstance(wanted, BesideKey) and self.entry(AloneKey(wanted.tenant, wanted.gpu, DEDICATED, None)) is None:
            return None
        if found is None:
            found = read_profile(self.store, self.entry_id(wanted))
            if found is not None:
                self.entries[str(wanted)] = found
        return found

    def entry_id(self, wanted: AloneKey | BesideKey) -> str:
        return "p-" + fingerprint(self.key(wanted))

    def search(self, wanted: AloneKey | BesideKey) -> TenantSearch:
        """The capacity search that measures one entry, in the scenario of its servers' set-up
        (SETUP, the same for every entry those servers serve), its probes STORE/SETUP/ID-PROBE."""
        entry_id = self.entry_id(wanted)
        tenant, gpu = self.plan.tenant(wanted.tenant), self.gpus[wanted.gpu]
        members = [Member(SEARCHED, tenant, getattr(wanted, "slice", None), tenant.target)]
        settings: tuple[Neighbours, ...] = ()
        alone = None
        if isinstance(wanted, BesideKey):
            neighbour = self.plan.tenant(wanted.neighbour)
            members.append(Member(BESIDE, neighbour, None, neighbour.target))
            settings = (Neighbours(((BESIDE, neighbour.target),)),)
            found = self.entry(AloneKey(wanted.tenant, wanted.gpu, DEDICATED, None))
            assert found is not None
            alone = AloneBounds(found.capacity, found.first_infeasible)
        options = CapacityConfig.model_validate(self.key(wanted)["search"])
        config = gpu_scenario(self.plan, "setup", gpu, wanted.placement, members, options.window_s,
                              options.settle_s, self.store)
        setup = "s-" + fingerprint(config.model_dump(mode="json", include={"model", "servers", "sharing"}))
        config = config.model_copy(update={"scenario": setup, "out": self.store / setup})
        return TenantSearch(config, SEARCHED, settings, options, alone, prefix=f"{entry_id}-",
                            beside_start=options.start)

    def record(self, wanted: AloneKey | BesideKey, search: TenantSearch) -> ProfileEntry | None:
        """The entry, from its probes, once its search has ended (None: it has not)."""
        rows, _ = search_rows(search, self.store / search.config.scenario)
        target = self.plan.tenant(wanted.tenant).slo.attainment
        row = next((r for r in rows if r.target == target), None)
        if row is None or not row.probes or INCOMPLETE in row.why:
            return None
        kind = "beside" if isinstance(wanted, BesideKey) else "dedicated" if wanted.slice is None else "slice"
        entry = ProfileEntry(id=search.prefix.rstrip("-"), kind=kind, gpu=wanted.gpu, placement=wanted.placement,
                             slice=getattr(wanted, "slice", None), knob=row.knob, target=target,
                             capacity=row.capacity or 0.0, first_infeasible=row.first_infeasible,
                             resolved=row.resolved,
                             why=row.why, probes=row.probes, capacity_run_dir=row.capacity_run_dir,
                             key=self.key(wanted))
        write_profile(self.store, entry)
        self.entries[str(wanted)] = entry
        return entry

    def problem(self, refuted: tuple[GroupKey, ...] = (), proven: tuple[GroupKey, ...] = ()) -> PackingProblem:
        demands = tuple(Demand(t.name, t.model, t.target) for t in self.plan.tenants)
        kinds = tuple(GpuKind(g.gpu, g.count, tuple(g.placements),
                              tuple(Slice(*s) for s in g.mig_slices()),
                              g.max_tenants) for g in self.plan.fleet)
        alone: dict[AloneKey, float] = {}
        beside: dict[BesideKey, float] = {}
        for wanted in self.known_keys(demands, kinds):
            found = self.entry(wanted)
            if found is not None:
                (alone if isinstance(wanted, AloneKey) else beside)[wanted] = found.capacity  # type: ignore[index]
        return PackingProblem(demands, kinds, Profiles(alone, beside), self.plan.margin, refuted, proven)

    def known_keys(self, demands: tuple[Any, ...], kinds: tuple[GpuKind, ...]) -> list[AloneKey | BesideKey]:
        """Every key the model could ask for, so those in the store are found."""
        keys: list[AloneKey | BesideKey] = []
        for kind in kinds:
            for d in demands:
                keys.append(AloneKey(d.name, kind.model, DEDICATED, None))
                for placement in kind.placements:
                    if placement in ("mig", "mig_emulation"):
                        keys += [AloneKey(d.name, kind.model, placement, s.name) for s in kind.slices]
                    else:
                        keys += [BesideKey(d.name, u.name, kind.model, placement) for u in demands if u != d]
        return keys


def profile(fleet: Fleet, run_stage: RunStage, say: Callable[[str], None]) -> PackingProblem:
    """Measure what the model lacks, stage by stage, until it lacks nothing; the searches that
    share a set-up of servers run in one scenario, so its servers start once."""
    while True:
        problem = fleet.problem()
        alone, pairs = missing_profiles(problem)
        wanted: list[AloneKey | BesideKey] = list(alone) if alone else list(pairs)
        if not wanted:
            return problem
        searches = [fleet.search(w) for w in wanted]
        setups: dict[str, list[TenantSearch]] = {}
        for search in searches:
            setups.setdefault(search.config.scenario, []).append(search)
        what = "alone on a whole GPU or slice" if alone else "beside a neighbour at its target"
        say(f"profiling: {len(wanted)} capacit{'y' if len(wanted) == 1 else 'ies'} to measure ({what}) in "
            f"{len(setups)} set-up(s) of servers; store {fleet.store}")
        code = run_stage([ScenarioPlan(chain[0].config, [], SearchChain(tuple(chain))) for chain in setups.values()],
                         fleet.store)
        ended = [fleet.record(w, s) for w, s in zip(wanted, searches)]
        if code or None in ended:
            lost = [s.prefix.rstrip("-") for s, e in zip(searches, ended) if e is None]
            raise PlanStopped(code or 1, f"profiling stopped before {len(lost)} search(es) ended "
                                         f"({', '.join(lost)}); rerun to resume")


# --- proofs -------------------------------------------------------------------------------------

def group_fingerprints(plan: PlanConfig, names: list[str]) -> list[str]:
    return sorted(fingerprint(tenant_spec(plan, plan.tenant(n), True)) for n in names)


def proof_name(plan: PlanConfig, assignment: GpuAssignment) -> str:
    seats = [(s.tenant, s.slice) for s in assignment.seats]
    return f"{assignment.gpu}-{assignment.placement}-" + fingerprint(
        {"gpu": assignment.gpu, "placement": assignment.placement, "seats": sorted(
            (fingerprint(tenant_spec(plan, plan.tenant(t), True)), s) for t, s in seats),
         "proof": plan.proof.model_dump(mode="json")})


def proof_scenario(plan: PlanConfig, assignment: GpuAssignment, out: Path) -> ScenarioPlan:
    name = proof_name(plan, assignment)
    members = [Member(s.tenant, plan.tenant(s.tenant), s.slice, s.target) for s in assignment.seats]
    config = gpu_scenario(plan, name, next(g for g in plan.fleet if g.gpu == assignment.gpu),
                          assignment.placement, members, plan.proof.window_s, plan.proof.settle_s, out / name / PROOF)
    label = f"proof of {assignment.gpu} {assignment.placement}: {', '.join(s.tenant for s in assignment.seats)}"
    return ScenarioPlan(config, [PlannedCell(PROOF, "phase", None, 1, config, label)])


@dataclass(frozen=True)
class ProofOutcome:
    held: bool
    seats: list[SeatDoc]
    energy_per_token_j: float | None


def read_proof(plan: PlanConfig, assignment: GpuAssignment, folder: Path) -> ProofOutcome | None:
    """A proof run's verdict: every tenant at or above its attainment target; None unless complete."""
    try:
        summary = read_run(folder)
    except SummaryUnreadable:
        return None
    if not summary.verdict.complete or summary.tenants is None:
        return None
    seats, held = [], True
    for seat in assignment.seats:
        tenant = plan.tenant(seat.tenant)
        block = summary.tenants.get(seat.tenant)
        good = None if block is None else block.good_requests or 0
        total = None if block is None else block.completed + block.failed
        attained = good / total if good is not None and total else None
        held = held and attained is not None and attained >= tenant.slo.attainment
        seats.append(SeatDoc(tenant=seat.tenant, slice=seat.slice, target=seat.target, unit=tenant.unit,
                             capacity=seat.capacity, headroom=seat.headroom,
                             attainment_target=tenant.slo.attainment, attainment=attained,
                             wilson_low=None if not total else wilson(good or 0, total)[0], good=good, total=total))
    energy = None if summary.gpu is None else summary.gpu.energy_per_output_token_j
    return ProofOutcome(held, seats, energy)


def groups_in(plan: PlanConfig, records: list[ProofRecord], held: bool) -> tuple[GroupKey, ...]:
    """The store's proven (or refuted) groups among this plan's tenants, by their fingerprints."""
    by_print = {fingerprint(tenant_spec(plan, t, True)): t.name for t in plan.tenants}
    return tuple(GroupKey(r.gpu, r.placement, frozenset(by_print[p] for p in r.tenants))
                 for r in records if r.held == held and all(p in by_print for p in r.tenants))


@dataclass(frozen=True)
class PlanResult:
    doc: PlanDoc
    markdown: str


def make_plan(plan: PlanConfig, out: Path, run_stage: RunStage, say: Callable[[str], None]) -> PlanResult:
    """Profile, search and prove, resuming from what the store and OUT already hold."""
    store = plan.store or out / "profiles"
    fleet = Fleet(plan, store)
    profile(fleet, run_stage, say)
    proofs_dir = out / "proofs"
    rounds = 0
    while True:
        rounds += 1
        records = read_proofs(store)
        problem = fleet.problem(groups_in(plan, records, False), groups_in(plan, records, True))
        try:
            packing = solve(problem)
        except Unplaceable as err:
            raise ConfigError(f"plan: {unplaceable_line(plan, err)}") from None
        say(f"search {rounds}: {packing.gpus_used} GPU(s) ({packing.method}"
            f"{', optimal' if packing.optimal else ''}; lower bound {packing.lower_bound}, "
            f"dedicated {packing.dedicated}); proving each")
        scenarios = [proof_scenario(plan, a, proofs_dir) for a in packing.assignments]
        code = run_stage(scenarios, proofs_dir)
        outcomes = [read_proof(plan, a, proofs_dir / s.config.scenario / PROOF)
                    for a, s in zip(packing.assignments, scenarios)]
        add_proofs(store, [ProofRecord(gpu=a.gpu, placement=a.placement,
                                       tenants=group_fingerprints(plan, [s.tenant for s in a.seats]),
                                       held=o.held, run_dir=str(proofs_dir / s.config.scenario / PROOF))
                           for a, s, o in zip(packing.assignments, scenarios, outcomes) if o is not None])
        if code or None in outcomes:
            raise PlanStopped(code or 1, "a proof run did not complete; rerun to resume")
        if all(o.held for o in outcomes if o is not None) or rounds == MAX_ROUNDS:  # type: ignore[union-attr]
            break
        failed = [a for a, o in zip(packing.assignments, outcomes) if o is not None and not o.held]
        say(f"refuted: {'; '.join(', '.join(s.tenant for s in a.seats) + ' on ' + a.gpu for a in failed)}: "
            "searching again without these groups")
    doc = plan_doc(plan, store, packing, scenarios, outcomes, rounds, records=read_proofs(store))  # type: ignore[arg-type]
    return PlanResult(doc, plan_markdown(doc))


def unplaceable_line(plan: PlanConfig, err: Unplaceable) -> str:
    if err.tenant is None:
        return str(err)
    tenant = plan.tenant(err.tenant)
    kind = "req/s" if tenant.load.open_loop else "requests in flight"
    return f"{err} ({kind}); lower its target, loosen its SLO, or give a faster GPU"


def plan_doc(plan: PlanConfig, store: Path, packing: Packing, scenarios: list[ScenarioPlan],
             outcomes: list[ProofOutcome], rounds: int, records: list[ProofRecord]) -> PlanDoc:
    gpus = [GpuDoc(index=i, gpu=a.gpu, placement=a.placement, seats=o.seats, proven=o.held,
                   proof_run_dir=str(s.config.out), energy_per_token_j=o.energy_per_token_j)
            for i, (a, s, o) in enumerate(zip(packing.assignments, scenarios, outcomes))]
    proven = all(g.proven for g in gpus)
    why = ("every GPU proven by a measured run of its tenants together at their targets" if proven else
           f"not every GPU was proven after {rounds} searches: see the proof runs")
    return PlanDoc(plan=plan.plan, status="proven" if proven else "unproven", why=why, gpus_used=packing.gpus_used,
                   dedicated=packing.dedicated, lower_bound=packing.lower_bound, method=packing.method,
                   optimal=packing.optimal, margin=plan.margin, rounds=rounds, gpus=gpus,
                   refuted=[r for r in records if not r.held], profiles=profile_uses(plan, store),
                   store=str(store))


def profile_uses(plan: PlanConfig, store: Path) -> list[ProfileUse]:
    """The store's capacities this plan's model read, per tenant (and neighbour)."""
    fleet = Fleet(plan, store)
    problem = fleet.problem()
    uses = []
    for key in fleet.known_keys(problem.demands, problem.gpus):
        entry = fleet.entry(key)
        if entry is not None:
            uses.append(ProfileUse(tenant=key.tenant, neighbour=getattr(key, "neighbour", None), kind=entry.kind,
                                   gpu=entry.gpu, placement=entry.placement, slice=entry.slice,
                                   capacity=entry.capacity, resolved=entry.resolved,
                                   entry=str(profile_path(store, entry.id))))
    return uses


def plan_markdown(doc: PlanDoc) -> str:
    lines = [f"# Plan {doc.plan}: {doc.gpus_used} GPU(s), {doc.status}", "",
             f"{doc.why}. Dedicated (one GPU per tenant): {doc.dedicated}; lower bound: {doc.lower_bound} "
             f"({doc.method}{', optimal' if doc.optimal else ''}); margin {doc.margin:.0%}; "
             f"searches: {doc.rounds}.", "",
             "| GPU | model | placement | tenant | slice | target | capacity | headroom | attainment (target) "
             "| Wilson low | energy/token | proof run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for gpu in doc.gpus:
        for i, seat in enumerate(gpu.seats):
            lines.append("| " + " | ".join([
                str(gpu.index) if not i else "", gpu.gpu if not i else "", gpu.placement if not i else "",
                seat.tenant, seat.slice or "-", f"{seat.target:g} {seat.unit}", _num(seat.capacity, "g"),
                _num(seat.headroom, ".0%"), f"{_num(seat.attainment, '.3f')} ({seat.attainment_target:g})",
                _num(seat.wilson_low, ".3f"),
                (_num(gpu.energy_per_token_j, ".3f") + " J") if not i and gpu.energy_per_token_j else "-" if not i else "",
                ("proven: " if gpu.proven else "REFUTED: ") + str(gpu.proof_run_dir) if not i else ""]) + " |")
    if doc.refuted:
        lines += ["", "Groups refuted by earlier proof runs (never recommended again):", ""]
        lines += [f"- {r.gpu} {r.placement}: {len(r.tenants)} tenants, {r.run_dir}" for r in doc.refuted]
    lines += ["", f"Capacities behind it ({len({u.entry for u in doc.profiles})} store entries, {doc.store}):", ""]
    lines += [f"- {u.tenant} {'beside ' + u.neighbour if u.neighbour else 'alone'} on {u.gpu} "
              f"{u.placement}{' ' + u.slice if u.slice else ''}: {u.capacity:g}"
              f"{'' if u.resolved else ' (unresolved)'} ({Path(u.entry).name})" for u in doc.profiles]
    return "\n".join(lines) + "\n"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def write_plan(out: Path, result: PlanResult) -> None:
    write_plan_doc(out, result.doc, result.markdown)
