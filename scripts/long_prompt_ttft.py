"""How often a long prompt arrives while another request waits for its first token, and what
that does to the waiting request's TTFT (docs/sharegpt.md).

A request "meets" a long prompt when another request whose prompt is at least LONG tokens was
sent between its own send and its first token: that prompt's prefill is batched with, or runs
ahead of, the waiting request's. The window's opening wave (every closed-loop slot sending at
once) is counted apart, after --opening seconds: it is where the longest TTFTs come from.
Reads requests.csv of each run folder given.
    python scripts/long_prompt_ttft.py results/h200/sharegpt-matrix/*/c16_rep1 [--long 1024] [--opening 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def meets_long_prompt(requests: pd.DataFrame, long: int) -> pd.Series:
    """Per measured request: whether a long prompt was sent while it waited for its first token."""
    long_sends = np.sort(requests.loc[requests["input_tokens"] >= long, "sent"].to_numpy())
    first = np.searchsorted(long_sends, requests["sent"].to_numpy(), side="right")
    last = np.searchsorted(long_sends, requests["first_token"].to_numpy(), side="right")
    # A long request does not meet itself: it is sent at its own `sent`, excluded by side="right".
    return pd.Series(last > first, index=requests.index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--long", type=int, default=1024, help="prompt tokens from which a prompt counts as long")
    parser.add_argument("--opening", type=float, default=1.0, help="seconds of the window counted as its opening wave")
    args = parser.parse_args()
    print(f"{'run':<30} {'long prompts':>12} {'TTFT p99 opening / rest (ms)':>29} {'rest: met one':>14} "
          f"{'TTFT p50 met/not (ms)':>22} {'TTFT max met (ms)':>18}")
    for folder in args.runs:
        rows = pd.read_csv(folder / "requests.csv")
        rows = rows[(rows["warmup"] == 0) & (rows["status"] == "ok")].copy()
        opening = rows["sent"] < rows["sent"].min() + args.opening
        met = meets_long_prompt(rows, args.long) & ~opening
        ttft = rows["ttft_s"] * 1000
        rest = ~opening

        def pct(mask: pd.Series, q: float) -> str:
            return f"{np.percentile(ttft[mask], q):.0f}" if mask.any() else "-"

        long_share = (rows["input_tokens"] >= args.long).mean()
        print(f"{folder.parent.name:<30} {long_share:>11.1%} {pct(opening, 99) + ' / ' + pct(rest, 99):>29} "
              f"{f'{met.sum()} of {rest.sum()}':>14} {pct(met, 50) + ' / ' + pct(rest & ~met, 50):>22} "
              f"{pct(met, 100):>18}")


if __name__ == "__main__":
    main()
