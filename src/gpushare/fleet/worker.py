"""A worker process of `matrix --gpus`: one scenario on the GPU it is given.

Reads its job (the scenario's plan, the cells to run, the matrix folder, the GPU) as a JSON
line on stdin, then, where the driver's cells follow from one another (a search), each next
cell as a JSON line once the one before it has ended; it writes one JSON line per event on stdout; its own console goes to stderr, which the
driver sends to a log file. It is its own command-line edge: it handles the signals the
driver forwards to it exactly as a one-GPU matrix would (the load stops, the folder is
written, the servers stop), and reports the cells it did not reach as not run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

from ..experiment.matrix import run_scenario_here
from ..experiment.matrix_plan import Todo, cell_on_gpu, on_gpu
from ..experiment.matrix_events import MatrixEvent, encode_event
from ..interrupts import Interrupts
from . import cell_from_doc, plan_from_doc


def main() -> int:
    job = json.loads(sys.stdin.readline())
    gpu = int(job["gpu"])
    plan = on_gpu(plan_from_doc(job["plan"]), gpu)
    todo = Todo([cell_on_gpu(cell_from_doc(doc), gpu) for doc in job["cells"]],
                (cell_on_gpu(cell_from_doc(json.loads(line)), gpu) for line in sys.stdin) if job["more"] else None)
    console = Console(file=sys.stderr, width=120)

    def publish(event: MatrixEvent) -> None:
        sys.stdout.write(encode_event(event) + "\n")
        sys.stdout.flush()

    with Interrupts().installed() as interrupts:
        run_scenario_here(plan, todo, Path(job["root"]), console, interrupts, publish, job["where"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
