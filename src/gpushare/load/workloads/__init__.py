"""Workload kinds: what a tenant's prompts are made of (`workload.kind`).

Each kind is one registered pydantic class in a module of this package, its own config type
(discriminated by `kind`) and the maker of its prompts. Every module here is imported with the
package, and the scenario's `workload` accepts exactly the registered kinds: a new kind is
its file.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import numpy as np

from ...errors import ConfigError
from ...registry import Registry, import_modules
from ...strict import StrictModel
from ..tokens import Tokenizer


class Prompt(NamedTuple):
    """One request's prompt as a workload makes it."""

    text: str
    max_tokens: int
    tenant: str | None
    """The row's own tenant label (a dataset row may carry one), for routing: tenant."""
    input_tokens: int | None
    """The prompt's length by the tokenizer, where the kind counted it."""


class Prompts(Protocol):
    """A workload's prompts, handed out in order."""

    def take(self, count: int) -> list[Prompt]:
        """The next `count` prompts; the random draws stay in request order, whatever the batch."""

    def describe(self) -> dict[str, Any]:
        """The workload for summary.json: at least its kind."""


class Workload(StrictModel):
    """The base of every workload kind. A kind sets `kind: Literal[NAME]` and registers
    with `@WORKLOADS.register(NAME)`."""

    kind: str

    @property
    def label(self) -> str:
        """What analysis names the workload by: equal for equal workloads, e.g. synthetic 512/128."""
        raise NotImplementedError

    def prompts(self, tokenizer: Tokenizer | None, rng: np.random.Generator, chat: bool) -> Prompts:
        """The prompts of this workload, drawn from `rng`; `chat`: sent to the chat endpoint.
        A ConfigError if they cannot be made (a file that does not read, no tokenizer)."""
        raise NotImplementedError

    def with_context(self, context_length: Callable[[], int]) -> Workload:
        """The workload as sent to servers whose smallest context is `context_length()`; a
        kind that sizes requests by the context fills it in, the others are unchanged."""
        return self

    def _tokenizer(self, tokenizer: Tokenizer | None) -> Tokenizer:
        if tokenizer is None:
            raise ConfigError(f"workload: {self.kind} prompts need a tokenizer")
        return tokenizer


WORKLOADS: Registry[Workload] = Registry("kind")

import_modules(__name__)
