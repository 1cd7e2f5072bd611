"""What to send and when: request specs from a workload config, and arrival times.

Prompts and arrivals draw from separate random streams of one seed, so the same seed gives
the same requests in the same order whatever the timing of the run.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from ..config import (
    ApiConfig,
    DatasetWorkload,
    LoadConfig,
    ShareGPTWorkload,
    SyntheticWorkload,
    Workload,
)
from ..errors import ConfigError
from ..core.records import RequestSpec
from .sharegpt import ShareGPTSampler, sharegpt_pair


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer we use."""

    vocab_size: int
    all_special_ids: list[int]

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def batch_decode(self, sequences: Sequence[Sequence[int]]) -> list[str]: ...

    def __call__(self, text: list[str], add_special_tokens: bool = ...) -> Any: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> Tokenizer:
    """Loaded once per process: a matrix's cells share their scenario's tokenizer."""
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


# --- synthetic prompts -------------------------------------------------------------------


def random_token_ids(tokenizer: Tokenizer, rng: np.random.Generator, n_tokens: int) -> list[int]:
    """n_tokens random ids from the tokenizer's vocabulary, special tokens left out."""
    special = set(tokenizer.all_special_ids)
    ids: list[int] = []
    while len(ids) < n_tokens:
        draw = rng.integers(0, tokenizer.vocab_size, size=n_tokens - len(ids) + 8)
        ids.extend(int(i) for i in draw if int(i) not in special)
    return ids[:n_tokens]


def batch_codec(tokenizer: Tokenizer) -> tuple[Callable[[Sequence[Sequence[int]]], list[str]],
                                                Callable[[list[str]], list[list[int]]]]:
    """(decode, encode) over lists, without special tokens. A fast tokenizer's own Rust calls
    are used when it has them: the Python wrappers check every id in Python, which made
    them most of the cost of building prompts on a many-core host."""
    fast = getattr(tokenizer, "backend_tokenizer", None)
    if fast is None:
        return tokenizer.batch_decode, lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    encode_batch = getattr(fast, "encode_batch_fast", fast.encode_batch)  # _fast: no offsets
    return (lambda ids: fast.decode_batch(ids, skip_special_tokens=False),
            lambda texts: [e.ids for e in encode_batch(texts, add_special_tokens=False)])


def prompt_texts(tokenizer: Tokenizer, id_lists: Sequence[list[int]]) -> list[tuple[str, int]]:
    """Each id list as text, and that text's length by `tokenizer`.

    Decoding random ids and encoding the text again does not always round-trip, so the
    ids are re-encoded and cut to length once; the server's usage says the exact count.
    The tokenizer's batch calls spread a batch over every core.
    """
    decode, encode = batch_codec(tokenizer)
    again = [ids[:len(wanted)] for ids, wanted in zip(encode(decode(id_lists)), id_lists)]
    return list(zip(decode(again), (len(ids) for ids in again)))


# --- datasets ----------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON array or a JSON Lines file; a flaw is one line saying where."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"workload.path: cannot read {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        at_line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"workload.path: {path} line {at_line} is not UTF-8 text "
                          f"(byte {data[err.start:err.start + 1]!r} at offset {err.start})") from None
    if not text.strip():
        raise ConfigError(f"workload.path: {path} is empty")
    numbered: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"workload.path: {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
        numbered, where = list(enumerate(rows, start=1)), "item"
    else:
        where = "line"
        # split, not splitlines: JSON text may hold U+2028 and other characters splitlines breaks at
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError:
                raise ConfigError(f"workload.path: {path} line {number} is not valid JSON") from None
    for number, row in numbered:
        if not isinstance(row, dict):
            raise ConfigError(f"workload.path: {path} {where} {number} is not a JSON object "
                              f"(got {json.dumps(row)[:40]})")
    return [row for _, row in numbered]


def dataset_rows(
    workload: DatasetWorkload, tokenizer: Tokenizer | None, rng: np.random.Generator
) -> list[tuple[str, int, str | None]]:
    """(prompt, max_tokens, tenant) for every usable row, in file order."""
    out: list[tuple[str, int, str | None]] = []
    default_lengths = workload.output_tokens
    for number, row in enumerate(_read_rows(workload.path), start=1):
        if "prompt" in row:
            prompt, reply = str(row["prompt"]), None
            max_tokens = row.get("max_tokens")
            if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                           or max_tokens < 1):  # JSON's true is a Python int
                raise ConfigError(f"workload.path: {workload.path} row {number}: max_tokens must be a whole number >= 1 "
                                  f"(got {json.dumps(max_tokens)[:40]})")
        else:
            pair = sharegpt_pair(row)
            if pair is None:
                continue
            (prompt, reply), max_tokens = pair, None
        if max_tokens is None and default_lengths is not None:
            max_tokens = int(default_lengths.sample(rng, 1)[0])
        if max_tokens is None and reply is not None and tokenizer is not None:
            max_tokens = max(1, len(tokenizer.encode(reply, add_special_tokens=False)))
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(
                f"workload.path: row {number} gives no usable max_tokens; set workload.output_tokens"
            )
        tenant = row.get("tenant")
        out.append((prompt, max_tokens, None if tenant is None else str(tenant)))
    if not out:
        raise ConfigError(f"workload.path: {workload.path} has no rows with a prompt or a ShareGPT conversation")
    return out


def chat_template_tokens(tokenizer: Tokenizer) -> int:
    """Tokens the chat template adds around one user message, which the server counts against
    its context; 0 for a tokenizer without a template."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False,
                                             add_generation_prompt=True)
    except ValueError:  # transformers: the tokenizer has no chat template
        return 0
    return len(batch_codec(tokenizer)[1]([text])[0])


# --- the request source ------------------------------------------------------------------


BATCH = 256  # prompts tokenized per batch call


class RequestSource:
    """Request specs by index, generated in order on first use and then kept.

    Runs bounded by duration ask for as many as they need; the same seed always gives
    request i the same prompt.
    """

    def __init__(self, workload: Workload, api: ApiConfig, tokenizer: Tokenizer | None, rng: np.random.Generator):
        self._api = api
        self._tokenizer = tokenizer
        self._rng = rng
        self._specs: list[RequestSpec] = []
        self._kind = workload.kind
        self._synthetic = workload if isinstance(workload, SyntheticWorkload) else None
        self._rows = dataset_rows(workload, tokenizer, rng) if isinstance(workload, DatasetWorkload) else None
        if self._rows is None and tokenizer is None:
            raise ConfigError(f"workload: {workload.kind} prompts need a tokenizer")
        self._sharegpt: ShareGPTSampler | None = None
        if isinstance(workload, ShareGPTWorkload):
            assert tokenizer is not None
            template = chat_template_tokens(tokenizer) if api.endpoint == "chat" else 0
            self._sharegpt = ShareGPTSampler(workload, batch_codec(tokenizer)[1], rng, template)
        self._build(1)  # a workload that yields no request is an error now, before any run folder exists

    def _rows_for(self, first: int, count: int) -> list[tuple[str, int, str | None, int | None]]:
        """(text, max_tokens, tenant, input tokens) of requests first .. first + count - 1."""
        if self._rows is not None:
            return [(*self._rows[i % len(self._rows)], None) for i in range(first, first + count)]
        if self._sharegpt is not None:  # built in order: `first` is what it has handed out
            return [(text, max_tokens, None, n_in) for text, max_tokens, n_in in self._sharegpt.take(count)]
        assert self._synthetic is not None and self._tokenizer is not None
        draws = []
        for _ in range(count):  # the random draws stay in request order, whatever the batch
            target = int(self._synthetic.input_tokens.sample(self._rng, 1)[0])
            max_tokens = int(self._synthetic.output_tokens.sample(self._rng, 1)[0])
            draws.append((random_token_ids(self._tokenizer, self._rng, target), max_tokens))
        texts = prompt_texts(self._tokenizer, [ids for ids, _ in draws])
        return [(text, max_tokens, None, n_in) for (text, n_in), (_, max_tokens) in zip(texts, draws)]

    def _build(self, stop: int) -> None:
        while len(self._specs) < stop:
            first = len(self._specs)
            for i, (text, max_tokens, tenant, n_in) in enumerate(self._rows_for(first, min(BATCH, stop - first))):
                prompt: str | list[dict[str, Any]] = text
                if self._api.endpoint == "chat":
                    prompt = [{"role": "user", "content": text}]
                self._specs.append(RequestSpec(index=first + i, prompt=prompt, max_tokens=max_tokens,
                                               input_tokens=n_in, tenant=tenant))

    def __getitem__(self, index: int) -> RequestSpec:
        self._build(index + 1)
        return self._specs[index]

    def prepare(self, n: int) -> None:
        """Build the first n specs now, in batches, so the timed part of the run does not."""
        self._build(n)

    def describe(self) -> dict[str, Any]:
        """The workload for summary.json: its kind, and for ShareGPT the file's identity and
        how many conversations the sampling examined and kept."""
        return self._sharegpt.describe() if self._sharegpt else {"kind": self._kind}


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
