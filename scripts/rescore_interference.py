#!/usr/bin/env python3
"""Score an existing `gpushare interfere` --out folder again, from its phase folders, into
another folder, leaving the measured one as it is: what a change of the scoring (the quantity
each tenant is scored on, the aggregate over the common interval, a victim's loaded levels)
gives on runs measured before it. Each scenario's configuration is its shared phase's
config.yaml. --dedicated-from names a scenario of the folder whose solo phases are each tenant
alone on a GPU of its own (one server per tenant, or one server for all: its solo phases leave
nothing else running), used as the dedicated reference of every scenario.

    python scripts/rescore_interference.py --from results/h200/interference --out /tmp/rescored \\
        --dedicated-from h200-tenants-one-server

The new folder holds copies of the measured scenario folders (and of the reference's solo
phases as each tenant's dedicated phase) and the files `interfere` writes beside them;
`gpushare analyze --runs OUT` draws them.
"""

import argparse
import shutil
import sys
from pathlib import Path

from gpushare.errors import ConfigError
from gpushare.experiment.interference_protocol import DEDICATED, plan_interference, solo_cell, write_interference
from gpushare.measure.results import read_run_config
from gpushare.cli.interfere import print_interference

SHARED = "shared"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, required=True, help="an interfere --out folder")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the re-scored files")
    parser.add_argument("--dedicated-from", default=None, help="the scenario whose solo phases are the reference")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out {args.out} exists; give a new folder")
    folders = sorted(p.parent.parent for p in args.source.glob(f"*/{SHARED}/config.yaml"))
    configs = [read_run_config(folder / SHARED) for folder in folders]
    if not folders or any(c is None for c in configs):
        parser.error(f"--from {args.source}: no scenario folders whose shared phase's config.yaml reads")
    reference = None
    if args.dedicated_from is not None:
        reference = read_run_config(args.source / args.dedicated_from / SHARED)
        if reference is None:
            parser.error(f"--dedicated-from {args.dedicated_from}: no such scenario in {args.source}")
    try:
        plan = plan_interference(configs, reference)  # type: ignore[arg-type]
    except ConfigError as err:
        parser.error(str(err))
    args.out.mkdir(parents=True)
    for folder in folders:
        shutil.copytree(folder, args.out / folder.name)
    for tenant, scenario in plan.dedicated.items():
        shutil.copytree(args.source / args.dedicated_from / solo_cell(tenant),
                        args.out / scenario.config.scenario / DEDICATED)
    print_interference(write_interference(plan, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
