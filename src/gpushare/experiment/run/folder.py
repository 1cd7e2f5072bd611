"""The run folder: its name, and what it holds before anything starts (a summary that says
"not complete", the config, the environment)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from ... import environment
from ...config import ScenarioConfig, Tenant, dump_config
from ...core.files import CONFIG, ENV
from ...errors import ConfigError, RunFailure
from ...load.workload import load_label
from ...measure.results import write_unfinished
from ...serving.engines import LaunchPlan, redact, redact_env
from ...serving.server_env import server_environment

MAX_RUN_LABEL = 100
"""Characters of a run folder's name after its time stamp: far below the file systems' 255
bytes, so that a time stamp and an attempt suffix always fit."""


def run_label(scenario: str, tenants: list[Tenant]) -> str:
    """The scenario and each tenant's load (chat-r4+batch-c2). One longer than MAX_RUN_LABEL
    (forty tenants) is cut and ends in a hash of the whole, so that names stay distinct; the
    run's config.yaml and summary keep every tenant."""
    loads = [f"{t.name}-{load_label(t.load)}" if t.name else load_label(t.load) for t in tenants]
    label = f"{scenario}_{'+'.join(loads)}"
    if len(label) <= MAX_RUN_LABEL:
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:10]
    return f"{label[:MAX_RUN_LABEL - len(digest) - 1]}-{digest}"


def make_run_dir(root: Path, label: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}_{label}"
    for attempt in range(100):
        path = root / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise ConfigError(f"--out: cannot create a run folder under {root}: {err.strerror}") from None
    raise RunFailure(f"cannot create a run folder under {root}")


def open_run_dir(config: ScenarioConfig, tenants: list[Tenant], run_dir: Path | None,
                 plans: list[LaunchPlan]) -> Path:
    """The run folder with what is known before anything starts; its summary says "not
    complete" until the run has ended."""
    if run_dir is None:
        run_dir = make_run_dir(config.out, run_label(config.scenario, tenants))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_unfinished(run_dir, config.scenario)
        (run_dir / CONFIG).write_text(dump_config(config))
        env = environment.collect()
        env["servers"] = [
            {"name": p.name, "base_url": p.base_url, "argv": None if p.argv is None else redact(p.argv),
             "env": redact_env(p.env), "environment": redact_env(server_environment(p))}
            for p in plans
        ]
        (run_dir / ENV).write_text(json.dumps(env, indent=2, default=str))
    except OSError as err:
        raise ConfigError(f"--out: cannot write the run folder {run_dir}: {err.strerror or err}") from None
    return run_dir
