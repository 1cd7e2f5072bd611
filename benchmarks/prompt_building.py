"""How long does building synthetic prompts take, before a time-bounded window opens?

A run bounded by --duration builds its prompts before the window (docs/metrics.md), so
their cost is matrix wall time outside the windows. This prints prompts per second for
the workload's own path (random ids -> text -> re-encoded and cut -> text), on all of
this machine's cores.

Run:  .venv/bin/python benchmarks/prompt_building.py [--tokenizer PATH] [--prompts 4096] [--tokens 512]
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import numpy as np

from gpushare.config import EMBEDDED_MODEL, ApiConfig
from gpushare.load.workloads.synthetic import SyntheticWorkload
from gpushare.environment import cpu_model
from gpushare.serving.models import embedded_folder
from gpushare.load.workload import RequestSource, load_tokenizer


def prompts_per_s(tokenizer, prompts: int, tokens: int) -> float:
    source = RequestSource(SyntheticWorkload(kind="synthetic", input_tokens=tokens, output_tokens=128),
                           ApiConfig(endpoint="completions"), tokenizer, np.random.default_rng(0))
    t0 = time.perf_counter()
    source.prepare(prompts)
    return prompts / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", help="a tokenizer folder (default: the embedded model's)")
    parser.add_argument("--prompts", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=512, help="prompt length in tokens")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer or str(embedded_folder(EMBEDDED_MODEL)))
    prompts_per_s(tokenizer, 256, args.tokens)  # first calls set up the tokenizer's threads
    ours = prompts_per_s(tokenizer, args.prompts, args.tokens)
    print(f"{args.prompts} prompts of {args.tokens} tokens: {ours:,.0f} prompts/s, "
          f"{1000 / ours:.2f} ms each")
    print(f"{datetime.date.today()} on {cpu_model()}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
