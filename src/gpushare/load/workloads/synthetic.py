"""`kind: synthetic`: random-token prompts of drawn lengths."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import field_validator

from ..lengths import FixedLength, LengthDistribution, fixed_if_int
from ..tokens import Tokenizer, prompt_texts, random_token_ids
from . import WORKLOADS, Prompt, Workload


@WORKLOADS.register("synthetic")
class SyntheticWorkload(Workload):
    """Random-token prompts of the given lengths, built with the model's tokenizer."""

    kind: Literal["synthetic"] = "synthetic"
    input_tokens: LengthDistribution = FixedLength(value=128)
    output_tokens: LengthDistribution = FixedLength(value=128)

    _coerce = field_validator("input_tokens", "output_tokens", mode="before")(fixed_if_int)

    @property
    def label(self) -> str:
        return f"synthetic {self.input_tokens.label}/{self.output_tokens.label}"

    def prompts(self, tokenizer: Tokenizer | None, rng: np.random.Generator, chat: bool) -> SyntheticPrompts:
        return SyntheticPrompts(self, self._tokenizer(tokenizer), rng)


class SyntheticPrompts:
    def __init__(self, workload: SyntheticWorkload, tokenizer: Tokenizer, rng: np.random.Generator):
        self._workload, self._tokenizer, self._rng = workload, tokenizer, rng

    def take(self, count: int) -> list[Prompt]:
        draws = []
        for _ in range(count):  # the random draws stay in request order, whatever the batch
            target = int(self._workload.input_tokens.sample(self._rng, 1)[0])
            max_tokens = int(self._workload.output_tokens.sample(self._rng, 1)[0])
            draws.append((random_token_ids(self._tokenizer, self._rng, target), max_tokens))
        texts = prompt_texts(self._tokenizer, [ids for ids, _ in draws])
        return [Prompt(text, max_tokens, None, n_in) for (text, n_in), (_, max_tokens) in zip(texts, draws)]

    def describe(self) -> dict[str, Any]:
        return {"kind": "synthetic"}
