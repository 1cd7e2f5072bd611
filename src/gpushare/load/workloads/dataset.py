"""`kind: dataset`: prompts from a JSON Lines file (or a JSON array) of ShareGPT-style
conversations or {prompt, max_tokens} rows, sent in file order and again from the top."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import field_validator

from ...errors import ConfigError
from ..lengths import LengthDistribution, fixed_if_int
from ..sharegpt import sharegpt_pair
from ..tokens import Tokenizer
from . import WORKLOADS, Prompt, Workload


@WORKLOADS.register("dataset")
class DatasetWorkload(Workload):
    """Prompts from a JSONL file: ShareGPT-style conversations or {prompt, max_tokens} rows."""

    kind: Literal["dataset"]
    path: Path
    output_tokens: LengthDistribution | None = None
    """Used for rows that do not say how many tokens to generate."""

    _coerce = field_validator("output_tokens", mode="before")(fixed_if_int)

    @property
    def label(self) -> str:
        out = "" if self.output_tokens is None else f", out {self.output_tokens.label}"
        return f"dataset {self.path.name}{out}"

    def prompts(self, tokenizer: Tokenizer | None, rng: np.random.Generator, chat: bool) -> DatasetPrompts:
        return DatasetPrompts(dataset_rows(self, tokenizer, rng))


class DatasetPrompts:
    """The file's rows in order, from the first again once all were sent."""

    def __init__(self, rows: list[Prompt]):
        self._rows, self._next = rows, 0

    def take(self, count: int) -> list[Prompt]:
        first, self._next = self._next, self._next + count
        return [self._rows[i % len(self._rows)] for i in range(first, first + count)]

    def describe(self) -> dict[str, Any]:
        return {"kind": "dataset"}


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


def dataset_rows(workload: DatasetWorkload, tokenizer: Tokenizer | None, rng: np.random.Generator) -> list[Prompt]:
    """Every usable row, in file order."""
    out: list[Prompt] = []
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
        out.append(Prompt(prompt, max_tokens, None if tenant is None else str(tenant), None))
    if not out:
        raise ConfigError(f"workload.path: {workload.path} has no rows with a prompt or a ShareGPT conversation")
    return out
