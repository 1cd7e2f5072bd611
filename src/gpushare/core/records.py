"""The typed records that flow between modules: what to send, and what happened.

All times are seconds on one monotonic clock (`time.perf_counter`), shared by the load
generator, the GPU monitor and the run's own bookkeeping, so they can be lined up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK = "ok"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request to send: the prompt (text, or chat messages) and how many tokens to ask for."""

    index: int
    prompt: str | list[dict[str, Any]]
    max_tokens: int
    input_tokens: int | None = None
    """Prompt length by our tokenizer; the server's usage, when reported, is authoritative."""
    tenant: str | None = None
    """Routes the request to the server with this tenant label (routing: tenant)."""


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. `chunk_times[i]` is when network block i arrived and
    `chunk_tokens[i]` how many content events (tokens) it carried."""

    index: int
    endpoint: str
    warmup: bool = False
    scheduled: float = 0.0
    sent: float = 0.0
    first_token: float | None = None
    end: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage_reported: bool = False
    streamed_tokens: int | None = None
    """Token events the stream carried (None: not streamed), kept beside usage's count."""
    status: str = OK
    error: str = ""
    tenant: str | None = None
    step: int | None = None
    """The step of the tenant's step schedule it was scheduled in (None: no schedule, or warm-up)."""
    in_window: bool = True
    """Scheduled while every tenant was loading; only such requests are measured."""

    @property
    def measured(self) -> bool:
        return not self.warmup and self.in_window

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def usage_disagrees(self) -> bool:
        """The server's usage gives another output length than the token events it streamed
        (speculative decoding sends several tokens in one event, and vLLM merges the tokens of
        steps its API server had not sent yet; otherwise a server fault)."""
        return self.usage_reported and self.streamed_tokens is not None and self.output_tokens != self.streamed_tokens
