"""The run folder's file names, spelled once, and the atomic writer its JSON files go through."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
CONFIG = "config.yaml"
ENV = "env.json"
REQUESTS = "requests.csv"
CHUNKS = "chunks.csv"
GPU_SAMPLES = "gpu.csv"
PROCESSES = "processes.json"
TRACEBACK = "traceback.txt"
MPS_LOGS = "mps-log"
INDEX = "matrix.json"
"""A matrix folder's index of its cells."""
SUPERSEDED = "superseded.json"
"""In a run folder that a matrix's rerun set aside as an earlier attempt: which cell, and why."""
CONSOLE_LOG = "console.log"
"""A scenario's console where no terminal shows it (a Ray actor's)."""
INTERFERENCE = "interference.json"
"""An interference run's folder: every scenario's phases, comparisons and scores."""
INTERFERENCE_CSV = "interference.csv"
"""An interference run's folder: solo, shared and slowdown per scenario, tenant and metric."""
INTERFERENCE_TENANTS = "interference_tenants.csv"
"""An interference run's folder: per scenario and tenant, the quantity it was scored on and what it kept."""
INTERFERENCE_SCORES = "interference_scores.csv"
"""An interference run's folder: per scenario, fairness, STP and the output over the common interval."""
INTERFERENCE_LEVELS = "interference_levels.csv"
"""An interference run's folder: per victim, metric and loaded level of its aggressor, against solo."""
FLEET_LOGS = "fleet-logs"
"""A matrix folder's worker consoles under --gpus."""


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write through a temporary file and a rename, so a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=2, allow_nan=False))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
