"""The capacity search: the highest level of a tenant's own load at which its SLO attainment
meets a target, found with as few measured probes as the question allows.

A probe measures the tenant at one level for one window and counts its good requests. Its
attainment is judged with a Wilson 95 % interval: feasible when the whole interval is at or
above the target, infeasible when it is wholly below, otherwise unresolved. An unresolved
level is probed again with a window twice as long, up to a limit; past it, it stays
unresolved and counts as not proven feasible. The search brackets the capacity by doubling
(or halving) from a start level, then bisects until the bracket is within the knob's
tolerance or the probe budget is spent. Several targets share one set of probes, as RFC 9971
searches several loss ratios at once: every probe is judged against every target.

Everything here is pure: the next probe is a function of the probes so far. A search resumed
from stored outcomes therefore takes the same steps and asks for the same probes, so finished
probes are never measured twice. Nothing is smoothed: a level judged against the grain of a
monotone truth (feasible above an infeasible one) is reported, not averaged away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal

Z95 = 1.959963984540054
"""The normal quantile of a two-sided 95 % interval."""

Judgement = Literal["feasible", "infeasible", "unresolved"]
KnobKind = Literal["request_rate", "concurrency"]


def wilson(good: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion good/total: unlike the normal approximation it
    stays inside [0, 1] and is honest at 0 and at total, where a capacity search lives."""
    if total <= 0:
        return 0.0, 1.0
    p = good / total
    z2n = z * z / total
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / total + z2n / (4 * total)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def judge(good: int, total: int, target: float) -> Judgement:
    low, high = wilson(good, total)
    if low >= target:
        return "feasible"
    if high < target:
        return "infeasible"
    return "unresolved"


def requests_to_resolve(target: float) -> int:
    """The fewest requests whose Wilson lower bound reaches `target` when every one is good:
    a probe window shorter than this can never prove the target (0.99: 381, 0.9: 35)."""
    if target >= 1.0:
        raise ValueError("a target of 1 is never proven by a finite window; give attainment < 1")
    n = 1
    while wilson(n, n)[0] < target:
        n *= 2
    low, high = n // 2, n
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if wilson(mid, mid)[0] < target else (low, mid)
    return high


def _grid_step(kind: KnobKind, level: float) -> float:
    """The distance from a level to the next one the search can probe: 1 in flight, or one unit
    in the third significant figure of a rate."""
    return 1.0 if kind == "concurrency" else 10.0 ** (math.floor(math.log10(level)) - 2)


def least_level_holding(kind: KnobKind, target: float, counted: float) -> float:
    """The least level the search can probe (Knob.snap's grid: whole requests in flight, or a
    rate of three significant figures) at which a capacity holds `target` once only `counted`
    of it counts (counted x level >= target): a search started there answers at its first
    probe whether the tenant holds what a plan needs of it."""
    exact = target / counted
    step = _grid_step(kind, exact)
    level = max(1.0, math.ceil(exact - 1e-9)) if kind == "concurrency" else float(
        f"{math.ceil(exact / step - 1e-9) * step:.3g}")
    while counted * level < target:  # the float product fell short by a rounding error
        level = float(f"{level + _grid_step(kind, level):.3g}") if kind != "concurrency" else level + 1
    return float(level)


@dataclass(frozen=True)
class Knob:
    """What the search turns: a request rate (tolerance relative to the level, levels kept to
    three significant figures) or a concurrency (whole numbers, tolerance absolute)."""

    kind: KnobKind
    tolerance: float
    floor: float
    """The lowest level probed; below it the tenant is said to hold no load."""
    ceiling: float
    """The highest level probed (the capacity alone, for a search beside neighbours)."""

    def snap(self, level: float) -> float:
        if self.kind == "concurrency":
            return float(max(1, round(level)))
        return float(f"{level:.3g}")

    def converged(self, low: float, high: float) -> bool:
        if self.kind == "concurrency":
            return high - low <= self.tolerance
        return high - low <= self.tolerance * low

    def between(self, low: float, high: float) -> float:
        if self.kind == "concurrency":
            return float((int(low) + int(high)) // 2)
        return self.snap((low + high) / 2)


@dataclass(frozen=True)
class Probe:
    """One measured window: the level, how long (window w is 2**w base windows), its good
    requests and all its measured ones (failed included)."""

    level: float
    window: int
    good: int
    total: int

    def judged(self, target: float) -> Judgement:
        return judge(self.good, self.total, target)

    @property
    def attainment(self) -> float | None:
        return self.good / self.total if self.total else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.good, self.total)


@dataclass(frozen=True)
class SearchSpec:
    knob: Knob
    targets: tuple[float, ...]
    start: float
    budget: int
    """Probes at most, over all targets."""
    max_window: int = 2
    """The longest window an unresolved level is given: 2**max_window base windows."""


@dataclass(frozen=True)
class NextProbe:
    level: float
    window: int


@dataclass(frozen=True)
class GoalResult:
    """Where the search stands for one target."""

    target: float
    capacity: float | None
    """The highest level proven feasible below every level not proven so; 0: not even the
    floor; None: nothing probed yet."""
    first_infeasible: float | None
    """The lowest level proven infeasible."""
    at_capacity: Probe | None
    at_first_infeasible: Probe | None
    resolved: bool
    why: str
    non_monotone: tuple[float, ...]
    """Levels whose judgement a monotone truth would not give: feasible above a level proven
    infeasible, or infeasible below one proven feasible."""
    next: NextProbe | None
    """What this target asks for next; None: it is done."""


def deciding(probes: Iterable[Probe]) -> dict[float, Probe]:
    """Per level, the probe that decides it: its longest window (the last of equal ones)."""
    found: dict[float, Probe] = {}
    for probe in probes:
        held = found.get(probe.level)
        if held is None or probe.window >= held.window:
            found[probe.level] = probe
    return found


def goal(spec: SearchSpec, probes: list[Probe], target: float) -> GoalResult:
    """One target's state, and its next probe, from every probe so far."""
    knob = spec.knob
    by_level = deciding(probes)
    judged = {level: p.judged(target) for level, p in by_level.items()}
    feasible = sorted(level for level, j in judged.items() if j == "feasible")
    infeasible = sorted(level for level, j in judged.items() if j == "infeasible")
    open_levels = sorted(level for level, j in judged.items()
                         if j == "unresolved" and by_level[level].window < spec.max_window)
    stuck = sorted(level for level, j in judged.items()
                   if j == "unresolved" and by_level[level].window >= spec.max_window)
    blocked = min([*infeasible, *stuck], default=None)
    capacity = max((f for f in feasible if blocked is None or f < blocked), default=None)
    non_monotone = tuple(sorted({*(f for f in feasible if infeasible and f > infeasible[0]),
                                 *(i for i in infeasible if feasible and i < feasible[-1])}))
    first_bad = infeasible[0] if infeasible else None

    def result(next_probe: NextProbe | None, why: str, resolved: bool = False,
               capacity: float | None = capacity) -> GoalResult:
        return GoalResult(target, capacity, first_bad, by_level.get(capacity) if capacity else None,
                          by_level.get(first_bad) if first_bad is not None else None,
                          resolved and not non_monotone, why, non_monotone, next_probe)

    relevant = [u for u in open_levels if (capacity is None or u > capacity) and (blocked is None or u < blocked)]
    if relevant:  # a level that could still move the answer: give it a longer window
        level = relevant[0]
        return result(NextProbe(level, by_level[level].window + 1), f"unresolved at {level:g}; probing longer")
    if not judged:
        return result(NextProbe(knob.snap(min(max(spec.start, knob.floor), knob.ceiling)), 0), "not started")
    if capacity is None:
        lowest = min(judged)
        if lowest <= knob.floor:
            why = (f"unresolved at the floor ({lowest:g}) with the longest window" if judged[lowest] == "unresolved"
                   else f"infeasible at the floor ({lowest:g})")
            return result(None, why, resolved=judged[lowest] == "infeasible", capacity=0.0)
        below = knob.snap(max(knob.floor, lowest / 2))
        return result(NextProbe(below if below < lowest else knob.floor, 0), f"not feasible at {lowest:g}; halving")
    if blocked is None:
        if capacity >= knob.ceiling:
            return result(None, f"feasible up to the search's ceiling ({knob.ceiling:g})")
        return result(NextProbe(knob.snap(min(knob.ceiling, capacity * 2)), 0), f"feasible at {capacity:g}; doubling")
    if knob.converged(capacity, blocked):
        if blocked in stuck:
            return result(None, f"unresolved at {blocked:g} with the longest window")
        return result(None, "bracket within tolerance", resolved=True)
    middle = knob.between(capacity, blocked)
    if middle in judged or not capacity < middle < blocked:
        return result(None, "bracket as narrow as the knob's levels allow", resolved=blocked not in stuck)
    return result(NextProbe(middle, 0), f"bisecting {capacity:g}..{blocked:g}")


def next_probe(spec: SearchSpec, probes: list[Probe]) -> NextProbe | None:
    """The next probe the search needs (the first target still searching asks), or None when
    every target is done or the budget is spent."""
    if len(probes) >= spec.budget:
        return None
    for target in spec.targets:
        wanted = goal(spec, probes, target).next
        if wanted is not None:
            return wanted
    return None


def results(spec: SearchSpec, probes: list[Probe]) -> list[GoalResult]:
    """Every target's result; a target still searching when the budget ran out says so."""
    spent = len(probes) >= spec.budget
    found = []
    for target in spec.targets:
        state = goal(spec, probes, target)
        if state.next is not None and spent:
            state = GoalResult(state.target, state.capacity, state.first_infeasible, state.at_capacity,
                               state.at_first_infeasible, False, f"probe budget ({spec.budget}) spent; {state.why}",
                               state.non_monotone, None)
        found.append(state)
    return found
