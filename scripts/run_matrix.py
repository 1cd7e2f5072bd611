#!/usr/bin/env python3
"""The original matrix entry point, kept with its flags: `gpushare matrix` does the work.

    python scripts/run_matrix.py --model MODEL --concurrency 1 2 4 8 12 16
    python scripts/run_matrix.py --configs configs/baseline.yaml configs/mps.yaml --concurrency 8 16 24
"""

import sys

from gpushare.cli import main

args = sys.argv[1:]
if "--configs" not in args:
    args = ["--configs", "configs/baseline.yaml", *args]
sys.exit(main(["matrix", *args]))
