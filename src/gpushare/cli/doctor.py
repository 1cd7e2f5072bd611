"""`gpushare doctor` (what this machine offers, what earlier runs left running) and `gpushare model`."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .. import __version__, environment
from ..serving.models import EMBEDDED, embedded_folder, is_prepared, prepare_embedded
from .app import app, err_console, model_app


@app.command()
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
    clean: bool = typer.Option(False, "--clean", help="Stop what earlier gpushare runs left running, instead."),
) -> None:
    """Print what this machine offers (GPU/NVML, MPS, MIG, engines, the embedded model) and the
    servers and MPS daemons killed gpushare runs left running; changes nothing unless --clean."""
    from dataclasses import asdict

    from ..errors import RunFailure
    from ..serving import cleanup, leftovers
    from ..serving.engines import STOP_GRACE_S

    found = leftovers.find()
    folders = leftovers.ray_folders()
    if clean:
        for left in cleanup.clean(found, STOP_GRACE_S):
            print(f"stopped {left.kind} {left.name}: process group {left.pgid} "
                  f"(pids {', '.join(map(str, left.members))}), run folder {left.folder}")
        for folder in cleanup.clean_ray_folders(folders):
            print(f"removed {folder}: a Ray actor's folder whose actor is gone (cells it never handed back)")
        remaining = leftovers.find()
        if remaining:
            raise RunFailure("could not stop " + ", ".join(f"process group {left.pgid} ({left.kind} {left.name})"
                                                          for left in remaining))
        if not found and not folders:
            print("nothing to clean: no server, MPS daemon or Ray folder left behind by an earlier gpushare run")
        return
    gpu = environment.gpus()
    facts: dict[str, Any] = {
        "gpushare": __version__,
        "python": sys.version.split()[0],
        "gpu": gpu.model_dump(exclude_unset=True),
        "mps": environment.mps(),
        "engines": environment.engines(),
        "embedded_models": {
            name: {"prepared": is_prepared(name), "folder": str(embedded_folder(name))} for name in EMBEDDED
        },
        "leftovers": [asdict(left) for left in found],
        "ray_folders": [str(folder) for folder in folders],
    }
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    table = Table(title="gpushare doctor", show_header=False)
    table.add_column("what")
    table.add_column("found")
    table.add_row("gpushare / python", f"{__version__} / {facts['python']}")
    if gpu.nvml:
        table.add_row("NVIDIA driver", f"{gpu.driver} (CUDA {gpu.cuda_driver})")
        for d in gpu.devices:
            mig = {True: "MIG enabled", False: "MIG disabled", None: "no MIG"}[d.mig_enabled]
            table.add_row(f"GPU {d.index}", f"{d.name}, {d.memory_mib} MiB, {mig}, compute mode {d.compute_mode}")
    else:
        table.add_row("GPU / NVML", f"not available ({gpu.reason})")
    mps = facts["mps"]
    daemons = ", ".join(map(str, mps["control_daemons"])) or "none"
    table.add_row("MPS control", f"{mps['control_binary'] or 'not found'}; control daemons running: {daemons}")
    vllm = facts["engines"]["vllm"]
    table.add_row("engine vllm", "not installed" if vllm is None else f"{vllm['distribution']} {vllm['version']}")
    for name, m in facts["embedded_models"].items():
        table.add_row(f"model {name}", ("prepared in " if m["prepared"] else "not prepared yet; folder ") + m["folder"])
    for left in found:
        table.add_row(f"left behind: {left.kind} {left.name}",
                      f"process group {left.pgid}, pids {', '.join(map(str, left.members))}, "
                      f"run folder {left.folder}, started {left.started}")
    for folder in folders:
        table.add_row("left behind: Ray folder", f"{folder} (an actor's cells it never handed back, their logs)")
    table.add_row("left behind", f"{len(found)} process group(s), {len(folders)} Ray folder(s); clean them with: "
                  "gpushare doctor --clean" if found or folders else "nothing")
    Console().print(table)


@model_app.command("prepare")
def model_prepare(name: str = typer.Argument("smollm2", help=f"One of: {', '.join(EMBEDDED)}.")) -> None:
    """Convert the packaged GGUF weights into a model folder in the cache (once)."""
    folder = prepare_embedded(name, say=err_console.print)
    print(folder)

