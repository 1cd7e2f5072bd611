"""What to send and when: request specs from a workload config, and arrival times.

Prompts and arrivals draw from separate random streams of one seed, so the same seed gives
the same requests in the same order whatever the timing of the run.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import ApiConfig, LoadConfig
from ..errors import ConfigError
from ..core.records import RequestSpec
from .folder_tokenizer import FolderTokenizer, readable
from .tokens import Tokenizer
from .workloads import Workload


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> Tokenizer:
    """Loaded once per process: a matrix's cells share their scenario's tokenizer. A folder
    with a tokenizer.json is read directly; anything else goes through transformers."""
    folder = Path(name_or_path)
    if readable(folder):
        try:
            return FolderTokenizer.load(folder)
        except Exception as err:  # tokenizers and json raise their own types for a broken file
            raise ConfigError(f"tokenizer: cannot load '{name_or_path}': {str(err).splitlines()[0]}") from None
    try:
        from transformers import AutoTokenizer
    except ImportError as err:  # pragma: no cover - transformers is a dependency
        raise ConfigError(f"tokenizer: transformers is not importable ({err})") from None
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # transformers raises many types for a missing or broken folder
        raise ConfigError(f"tokenizer: cannot load '{name_or_path}': {str(err).splitlines()[0]}") from None


def random_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for (prompts, arrivals)."""
    prompts, arrivals = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(prompts), np.random.default_rng(arrivals)


# --- the request source ------------------------------------------------------------------


BATCH = 256  # prompts tokenized per batch call


class RequestSource:
    """Request specs by index, generated in order on first use and then kept.

    Runs bounded by duration ask for as many as they need; the same seed always gives
    request i the same prompt.
    """

    def __init__(self, workload: Workload, api: ApiConfig, tokenizer: Tokenizer | None, rng: np.random.Generator):
        self._api = api
        self._specs: list[RequestSpec] = []
        self._prompts = workload.prompts(tokenizer, rng, chat=api.endpoint == "chat")
        self._build(1)  # a workload that yields no request is an error now, before any run folder exists

    def _build(self, stop: int) -> None:
        while len(self._specs) < stop:
            first = len(self._specs)
            for i, made in enumerate(self._prompts.take(min(BATCH, stop - first))):
                prompt: str | list[dict[str, Any]] = made.text
                if self._api.endpoint == "chat":
                    prompt = [{"role": "user", "content": made.text}]
                self._specs.append(RequestSpec(index=first + i, prompt=prompt, max_tokens=made.max_tokens,
                                               input_tokens=made.input_tokens, tenant=made.tenant))

    def __getitem__(self, index: int) -> RequestSpec:
        self._build(index + 1)
        return self._specs[index]

    def prepare(self, n: int) -> None:
        """Build the first n specs now, in batches, so the timed part of the run does not."""
        self._build(n)

    def describe(self) -> dict[str, Any]:
        """The workload for summary.json: its kind, and what its kind adds (for ShareGPT the
        file's identity and how many conversations the sampling examined and kept)."""
        return self._prompts.describe()


def inter_arrival_gaps(rng: np.random.Generator, rate: float, burstiness: float) -> Iterator[float]:
    """Gaps between request arrivals: gamma(shape=burstiness, mean=1/rate), forever.

    burstiness 1 gives a Poisson process; the mean rate is `rate` for any burstiness.
    """
    scale = 1.0 / (rate * burstiness)
    while True:
        yield from rng.gamma(burstiness, scale, size=1024).tolist()


def load_label(load: LoadConfig) -> str:
    """The run folder's load tag: c<concurrency> closed loop, r<rate> open loop; a step
    schedule's levels joined by '-' (c0-8-16)."""
    if load.steps is not None:
        return ("c" if load.steps.kind == "concurrency" else "r") + "-".join(f"{v:g}" for v in load.steps.levels)
    if load.open_loop:
        return f"r{load.request_rate:g}"
    return f"c{load.concurrency}"
