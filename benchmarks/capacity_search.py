"""How many probes does the capacity search spend, next to a uniform scan to the same tolerance?

On the known-law test server (tests/law_server.py: every token interval d0 x (1 + a x chat's
other requests + b x batch's requests in flight), chat's capacity in concurrency is known
exactly. This script runs `gpushare capacity`'s searches for chat alone and beside batch at 2
and 4 in flight, then a uniform 10-point scan (concurrency 1..10, the tolerance of 1 a
concurrency search bisects to) of every setting, judged the same way (a Wilson 95 % lower
bound at or above the target), each probe a run folder on the same servers. It prints, per
setting, the probes and the wall time of each, the capacity each found, and the law's.
Target: the search uses at most 60 % of the scan's probes and lands on the same capacity.

Run:  .venv/bin/python benchmarks/capacity_search.py [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from rich.console import Console

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from law_server import capacity_in_concurrency  # noqa: E402
from test_capacity import LAW, TPOT_BOUND, law_pair  # noqa: E402

from gpushare.config import parse_config  # noqa: E402
from gpushare.experiment.capacity import Neighbours, plan_capacity, probe_name, probe_outcome  # noqa: E402
from gpushare.experiment.matrix import ScenarioPlan, run_plan  # noqa: E402
from gpushare.measure.capacity_search import NextProbe, results  # noqa: E402

SCAN = range(1, 11)


def cell_walls(out: Path) -> dict[str, float]:
    return {c["cell"]: c["wall_s"] for c in json.loads((out / "matrix.json").read_text())["cells"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="capacity-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    config = parse_config(law_pair(root))
    console = Console(stderr=True)

    search_out = root / "search"
    plan = plan_capacity([config], {})
    run_plan(plan, search_out, console)
    search = plan[0].search
    target = search.targets[0]
    walls = cell_walls(search_out)
    found: dict[str, tuple[int, float, float]] = {}
    folder = search_out / config.scenario
    for neighbours, spec, probes, _ in search.walk(folder, lambda c: probe_outcome(folder / c.name, search.tenant, c)):
        (result,) = results(spec, probes)  # the same judgement as capacity.csv's
        names = [probe_name(neighbours, search.kind, p.level, p.window) for p in probes]
        found[neighbours.label] = (len(probes), sum(walls[n] for n in names), result.capacity or 0)

    # The scan judges every level as the search does: an unresolved level gets a window twice,
    # then four times as long, and every probe it takes counts.
    scan_out, settings = root / "scan", [Neighbours(), *search.settings]
    folder = scan_out / config.scenario
    taken: dict[tuple[str, float], list] = {(s.label, float(c)): [] for s in settings for c in SCAN}
    for window in range(plan[0].search.spec().max_window + 1):
        wanted = [(s, float(c)) for s in settings for c in SCAN
                  if not taken[(s.label, float(c))] or taken[(s.label, float(c))][-1].judged(target) == "unresolved"]
        if not wanted:
            break
        cells = [search.probe(s, NextProbe(c, window), folder) for s, c in wanted]
        run_plan([ScenarioPlan(search.config, cells)], scan_out, console)
        for (s, c), cell in zip(wanted, cells):
            taken[(s.label, c)].append(probe_outcome(folder / cell.name, search.tenant, cell))
    walls = cell_walls(scan_out)
    scanned: dict[str, tuple[int, float, float]] = {}
    for neighbours in settings:
        capacity, probes, wall = 0.0, 0, 0.0
        for c in SCAN:
            outcomes = taken[(neighbours.label, float(c))]
            probes += len(outcomes)
            wall += sum(walls[probe_name(neighbours, search.kind, float(c), p.window)] for p in outcomes)
        for c in SCAN:  # the highest level feasible below the first that is not
            if taken[(neighbours.label, float(c))][-1].judged(target) != "feasible":
                break
            capacity = float(c)
        scanned[neighbours.label] = (probes, wall, capacity)

    print(f"capacity search vs a uniform {len(SCAN)}-point scan on the known-law server "
          f"(d0={LAW['d0']}, a={LAW['a']}, b={LAW['b']}, TPOT bound {TPOT_BOUND * 1000:g} ms, attainment {target:g})")
    print(f"{'setting':<10} {'law':>4} {'search':>7} {'probes':>6} {'wall s':>7}   {'scan':>5} {'probes':>6} "
          f"{'wall s':>7}   {'probes used':>11}")
    total_search = total_scan = 0
    ok = True
    for label, (probes, wall, capacity) in found.items():
        in_flight = int(label.split("=")[1]) if label else 0
        law = capacity_in_concurrency(LAW["d0"], LAW["a"], LAW["b"], TPOT_BOUND, in_flight)
        scan_probes, scan_wall, scan_capacity = scanned[label]
        total_search, total_scan = total_search + probes, total_scan + scan_probes
        ok &= capacity == scan_capacity == law and probes <= 0.6 * scan_probes
        print(f"{label or 'alone':<10} {law:>4} {capacity:>7g} {probes:>6} {wall:>7.1f}   {scan_capacity:>5g} "
              f"{scan_probes:>6} {scan_wall:>7.1f}   {probes / scan_probes:>10.0%}")
    print(f"{'all':<10} {'':>4} {'':>7} {total_search:>6} {'':>7}   {'':>5} {total_scan:>6} {'':>7}   "
          f"{total_search / total_scan:>10.0%}")
    print(f"target (search <= 60 % of the scan's probes, same capacity as the scan and the law): "
          f"{'met' if ok else 'NOT met'}")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{datetime.date.today().isoformat()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"folders under {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
