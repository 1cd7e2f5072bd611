"""The fleet simulation: properties (Hypothesis) and a worked example by hand."""

import itertools
import math
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from gpushare.fleet.simulate import Cell, Scenario, Schedule, simulate, split_cells

POLICIES = ("whole", "listed", "sharded")


@st.composite
def cells(draw):
    wall = draw(st.floats(min_value=0.5, max_value=400, allow_nan=False))
    return Cell(wall, wall * draw(st.floats(min_value=0, max_value=1)))


@st.composite
def matrices(draw):
    n = draw(st.integers(min_value=1, max_value=8))
    return [Scenario(f"s{i}", tuple(draw(st.lists(cells(), min_size=1, max_size=6))),
                     draw(st.floats(min_value=0, max_value=200)), draw(st.floats(min_value=0, max_value=5)))
            for i in range(n)]


gpus = st.integers(min_value=1, max_value=20)
FAST = settings(max_examples=80, deadline=None)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def at_most(a: float, b: float) -> bool:
    return a <= b or close(a, b)


@FAST
@given(matrices(), gpus, st.sampled_from(POLICIES))
def test_makespan_at_least_both_lower_bounds(scenarios, g, policy):
    s = simulate(scenarios, g, policy)
    assert at_most(sum(x.work_s for x in scenarios) / g, s.makespan_s)
    assert at_most(s.bounds.per_gpu_s, s.makespan_s)
    assert at_most(s.bounds.longest_s, s.makespan_s)
    if policy != "sharded":
        assert close(s.bounds.longest_s, max(x.work_s for x in scenarios))
    else:  # a cell is never split, and its shard pays its scenario's start-up and stop
        assert close(s.bounds.longest_s, max(x.start_s + max(c.wall_s for c in x.cells) + x.stop_s
                                             for x in scenarios))


@FAST
@given(matrices(), st.sampled_from(POLICIES))
def test_one_gpu_runs_the_total_work(scenarios, policy):
    s = simulate(scenarios, 1, policy)
    total = math.fsum(x.start_s + sum(c.wall_s for c in x.cells) + x.stop_s for x in scenarios)
    assert close(s.makespan_s, total)
    assert s.tasks == len(scenarios)
    assert close(s.split.idle_s, 0.0)
    assert s.busy_fraction == pytest.approx(1.0)


@FAST
@given(matrices(), gpus, st.sampled_from(POLICIES))
def test_list_scheduling_bound(scenarios, g, policy):
    """Graham: any list schedule ends by (sum of tasks)/G + (1 - 1/G) x longest task. LPT is
    not monotone in G (more GPUs can end later), so that is not asserted."""
    s = simulate(scenarios, g, policy)
    durations = [p.task.duration_s for p in s.placements]
    assert at_most(s.makespan_s, math.fsum(durations) / g + (1 - 1 / g) * max(durations))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1, max_value=100), min_size=1, max_size=6), st.integers(min_value=2, max_value=3))
def test_longest_first_is_within_four_thirds_of_the_best(works, g):
    """Graham's LPT bound, against the best schedule found by trying every assignment."""
    scenarios = [Scenario(f"s{i}", (Cell(w, w),), 0) for i, w in enumerate(works)]
    best = min(max(math.fsum(w for w, gpu in zip(works, assign) if gpu == k) for k in range(g))
               for assign in itertools.product(range(g), repeat=len(works)))
    assert at_most(simulate(scenarios, g).makespan_s, (4 / 3 - 1 / (3 * g)) * best)


@FAST
@given(matrices(), gpus, st.sampled_from(POLICIES))
def test_time_split_sums_to_gpus_times_makespan(scenarios, g, policy):
    s = simulate(scenarios, g, policy)
    split = s.split
    assert split.idle_s >= 0
    assert close(split.total_s, g * s.makespan_s)
    assert close(split.busy_s, math.fsum(p.task.duration_s for p in s.placements))
    # Cells are run once whatever the policy: their time does not change, start-ups may.
    assert close(split.measurement_s, math.fsum(c.measured_s for x in scenarios for c in x.cells))
    assert close(split.cell_overhead_s, math.fsum(c.overhead_s for x in scenarios for c in x.cells))
    shards = Counter(p.task.scenario for p in s.placements)
    assert close(split.startup_s, math.fsum(x.start_s * shards[x.name] for x in scenarios))
    assert close(split.stop_s, math.fsum(x.stop_s * shards[x.name] for x in scenarios))
    assert 0 <= s.busy_fraction <= 1 + 1e-12


def _valid(s: Schedule, scenarios: list[Scenario]) -> None:
    """Every cell runs once, in its scenario's order; a GPU runs one task at a time; nothing
    uses a GPU the fleet has not."""
    for x in scenarios:
        shards = sorted((p.task for p in s.placements if p.task.scenario == x.name), key=lambda t: t.shard)
        assert [t.shard for t in shards] == list(range(len(shards)))
        assert all(t.shards == len(shards) for t in shards)
        assert tuple(itertools.chain.from_iterable(t.cells for t in shards)) == x.cells
    for gpu in range(s.gpus):
        spans = sorted((p.begin_s, p.end_s) for p in s.placements if p.gpu == gpu)
        assert all(at_most(a_end, b_begin) for (_, a_end), (b_begin, _) in zip(spans, spans[1:]))
    assert all(0 <= p.gpu < s.gpus and p.begin_s >= 0 for p in s.placements)
    assert close(s.makespan_s, max(p.end_s for p in s.placements))


@FAST
@given(matrices(), gpus, st.sampled_from(POLICIES))
def test_schedule_is_valid(scenarios, g, policy):
    _valid(simulate(scenarios, g, policy), scenarios)


@FAST
@given(matrices(), gpus)
def test_sharding_only_with_spare_gpus_and_never_slower(scenarios, g):
    whole, sharded = simulate(scenarios, g, "whole"), simulate(scenarios, g, "sharded")
    if g <= len(scenarios):
        assert sharded.placements == whole.placements
    else:
        assert sharded.tasks <= g  # each shard has a GPU of its own
        assert at_most(sharded.makespan_s, whole.makespan_s)
        assert close(whole.makespan_s, max(x.work_s for x in scenarios))  # one GPU each


@FAST
@given(st.lists(cells(), min_size=1, max_size=7), st.data())
def test_split_cells_is_an_optimal_contiguous_partition(cs, data):
    parts = data.draw(st.integers(min_value=1, max_value=len(cs)))
    runs = split_cells(cs, parts)
    assert len(runs) == parts and all(runs)
    assert tuple(itertools.chain.from_iterable(runs)) == tuple(cs)
    longest = max(sum(c.wall_s for c in run) for run in runs)
    best = min(max(sum(c.wall_s for c in cs[i:j]) for i, j in zip((0, *cuts), (*cuts, len(cs))))
               for cuts in itertools.combinations(range(1, len(cs)), parts - 1))
    assert close(longest, best)


def test_worked_example():
    """A: 10 + (30 + 20) + 2 = 62 s, B: 10 + 40 + 2 = 52 s, C: 5 + 10 + 1 = 16 s; work 130 s.
    On 2 GPUs, LPT: A on GPU 0 (0-62), B on GPU 1 (0-52), C after B (52-68): 68 s, 6 s idle;
    in the order C, B, A it is 78 s.
    On 4 GPUs whole: A alone decides, 62 s. Sharded: A splits into [30] (42 s) and [20] (32 s),
    the fourth GPU; then B decides: 52 s, A's second start-up and stop cost 12 s more."""
    a = Scenario("A", (Cell(30, 25), Cell(20, 15)), start_s=10, stop_s=2)
    b = Scenario("B", (Cell(40, 35),), start_s=10, stop_s=2)
    c = Scenario("C", (Cell(10, 8),), start_s=5, stop_s=1)
    two = simulate([c, b, a], 2)  # longest first, whatever the order given
    assert two.makespan_s == 68
    assert [(p.task.scenario, p.gpu, p.begin_s, p.end_s) for p in two.placements] == [
        ("A", 0, 0, 62), ("B", 1, 0, 52), ("C", 1, 52, 68)]
    split = two.split
    assert (split.startup_s, split.measurement_s, split.cell_overhead_s, split.stop_s, split.idle_s) == (
        25, 83, 17, 5, 6)
    assert (two.bounds.work_s, two.bounds.per_gpu_s, two.bounds.longest_s, two.bounds.lower_s) == (130, 65, 62, 65)
    assert two.busy_fraction == pytest.approx(130 / 136)

    # As listed (C, B, A): C on GPU 0 (0-16), B on GPU 1 (0-52), A after C (16-78): 78 s.
    listed = simulate([c, b, a], 2, "listed")
    assert [(p.task.scenario, p.gpu, p.begin_s, p.end_s) for p in listed.placements] == [
        ("C", 0, 0, 16), ("B", 1, 0, 52), ("A", 0, 16, 78)]
    assert simulate([a, b, c], 2, "listed").placements == two.placements

    assert simulate([a, b, c], 1).makespan_s == 130
    assert simulate([a, b, c], 4).makespan_s == 62
    sharded = simulate([a, b, c], 4, "sharded")
    assert sharded.makespan_s == 52
    assert sorted((p.task.scenario, p.task.shard, p.task.duration_s) for p in sharded.placements) == [
        ("A", 0, 42), ("A", 1, 32), ("B", 0, 52), ("C", 0, 16)]
    assert (sharded.split.startup_s, sharded.split.stop_s, sharded.split.idle_s) == (35, 7, 4 * 52 - 142)
    assert sharded.bounds.longest_s == 52  # B's one cell cannot be split


def test_a_split_that_shortens_nothing_is_taken_back():
    """One long cell decides: splitting its scenario would only pay start-up again."""
    x = Scenario("x", (Cell(100, 90), Cell(1, 1), Cell(1, 1)), start_s=10)
    s = simulate([x], 8, "sharded")
    assert s.tasks == 2  # [100] and [1, 1]; a third shard leaves 110 s as it is
    assert s.makespan_s == 110


def test_a_split_the_matrix_does_not_need_is_taken_back():
    """Y's one cell decides (100 s); X split in two (50 s each) would end no sooner."""
    x = Scenario("X", (Cell(50, 50), Cell(50, 50)), start_s=0)
    y = Scenario("Y", (Cell(100, 100),), start_s=0)
    s = simulate([x, y], 4, "sharded")
    assert s.makespan_s == 100
    assert sorted(p.task.scenario for p in s.placements) == ["X", "Y"]


def test_rejects_what_cannot_be_scheduled():
    with pytest.raises(ValueError):
        Cell(wall_s=1, measured_s=2)
    with pytest.raises(ValueError):
        Scenario("empty", (), start_s=1)
    with pytest.raises(ValueError):
        simulate([Scenario("x", (Cell(1, 1),), 0)], 0)
    with pytest.raises(ValueError):
        simulate([Scenario("x", (Cell(1, 1),), 0)], 1, "fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        split_cells([Cell(1, 1)], 2)
