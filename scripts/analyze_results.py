#!/usr/bin/env python3
"""The original analysis entry point, kept with its flags: `gpushare analyze` does the work.

    python scripts/analyze_results.py --runs runs --out runs/plots
"""

import argparse
import sys

from gpushare.cli import main

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--runs", nargs="+", default=["runs"], help="run folders or folders holding them")
parser.add_argument("--out", default="runs/plots", help="where the tables and figures go")
args = parser.parse_args()
sys.exit(main(["analyze", *[a for run in args.runs for a in ("--runs", run)], "--out", args.out]))
