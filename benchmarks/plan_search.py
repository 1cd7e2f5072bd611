"""How long does `gpushare plan`'s search take on a fleet-sized problem, and how close does it land?

Builds a problem shaped like stored profiles: tenants of 3 served models with targets and
capacities drawn from a seeded generator, a fleet of two GPU models (H200 capacities about 1.4x
H100's), placements engine, timeslice, mps and mig_emulation with each model's MIG slices, a
10 % margin. Each neighbour takes from a tenant a share of its capacity in proportion to the
neighbour's own load (least under engine, most under timeslice). Times `solve` and prints the
method, the GPUs used beside one per tenant and the lower bound, the gap between them, and the
seconds. Exits 1 when the search takes more than 60 s.

Run:  .venv/bin/python benchmarks/plan_search.py [--tenants 100] [--gpus 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from gpushare.measure.packing import (DEDICATED, AloneKey, BesideKey, Demand, GpuKind, PackingProblem, Profiles,
                                      Slice)
from gpushare.measure.packing_search import solve

SERVED = {"llama-3.1-8b": 6.0, "qwen2.5-7b": 5.0, "mistral-7b": 7.0}
"""Each served model's typical capacity alone on an H200, req/s."""
SLICES = {"H200": (Slice("1g.18gb", 1, 1), Slice("2g.35gb", 2, 2), Slice("3g.71gb", 3, 4), Slice("4g.71gb", 4, 4),
                   Slice("7g.141gb", 7, 8)),
          "H100": (Slice("1g.10gb", 1, 1), Slice("2g.20gb", 2, 2), Slice("3g.40gb", 3, 4), Slice("4g.40gb", 4, 4),
                   Slice("7g.80gb", 7, 8))}
SPEED = {"H200": 1.0, "H100": 1 / 1.4}
TAKES = {"engine": 0.7, "mps": 0.9, "timeslice": 1.2}
"""How much of a tenant's capacity a neighbour takes per unit of the neighbour's own utilisation."""
PLACEMENTS = ("engine", "timeslice", "mps", "mig_emulation")
MARGIN = 0.1


def problem(tenants: int, gpus: int, seed: int) -> PackingProblem:
    rng = np.random.default_rng(seed)
    served = list(SERVED)
    models = [served[i] for i in rng.integers(0, len(served), tenants)]
    names = [f"tenant-{i:03d}" for i in range(tenants)]
    h200 = {n: SERVED[m] * rng.uniform(0.8, 1.2) for n, m in zip(names, models)}
    demands = tuple(Demand(n, m, round(h200[n] * rng.uniform(0.08, 0.4), 2)) for n, m in zip(names, models))
    h200_count = round(gpus * 40 / 64)
    fleet = (GpuKind("H200", h200_count, PLACEMENTS, SLICES["H200"]), GpuKind("H100", gpus - h200_count, PLACEMENTS, SLICES["H100"]))
    alone: dict[AloneKey, float] = {}
    beside: dict[BesideKey, float] = {}
    for kind in fleet:
        capacity = {n: round(h200[n] * SPEED[kind.model] * rng.uniform(0.95, 1.05), 2) for n in names}
        for d in demands:
            alone[AloneKey(d.name, kind.model, DEDICATED, None)] = capacity[d.name]
            for s in kind.slices:  # the smallest slice holds the weights but little KV cache; H100's 1g none
                fits = 0.0 if s.name == "1g.10gb" else (0.5 if s.compute == 1 else 0.92)
                alone[AloneKey(d.name, kind.model, "mig_emulation", s.name)] = round(capacity[d.name] * s.compute / 7 * fits, 2)
            for u in demands:
                for placement, takes in TAKES.items():
                    if u is d or (placement == "engine" and u.model != d.model):
                        continue
                    loss = capacity[d.name] * takes * u.target / capacity[u.name] * rng.uniform(0.85, 1.15)
                    beside[BesideKey(d.name, u.name, kind.model, placement)] = round(max(0.0, capacity[d.name] - loss), 2)
    return PackingProblem(demands, fleet, Profiles(alone, beside), MARGIN)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    planned = problem(args.tenants, args.gpus, args.seed)
    started = time.perf_counter()
    packing = solve(planned)
    seconds = time.perf_counter() - started
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    gap = packing.gpus_used - packing.lower_bound
    used = {k.model: sum(a.gpu == k.model for a in packing.assignments) for k in planned.gpus}
    placements = sorted({a.placement for a in packing.assignments})
    print(f"{datetime.date.today().isoformat()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"tenants {len(planned.demands)}, fleet {sum(k.count for k in planned.gpus)} GPUs "
          f"({', '.join(f'{k.count} {k.model}' for k in planned.gpus)}), seed {args.seed}")
    print(f"method {packing.method}{' (optimal)' if packing.optimal else ''}: {packing.gpus_used} GPUs used "
          f"({', '.join(f'{n} {m}' for m, n in used.items())}; {', '.join(placements)}), dedicated {packing.dedicated}, "
          f"lower bound {packing.lower_bound}, gap {gap} ({100 * gap / packing.gpus_used:.1f} %), {seconds:.2f} s")
    return 1 if seconds > 60 else 0


if __name__ == "__main__":
    sys.exit(main())
