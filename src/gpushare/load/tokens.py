"""Tokenizer calls that building prompts needs: random ids, text of a given length, and
what a chat template adds. Batch calls throughout: they spread a batch over every core."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer we use."""

    vocab_size: int
    all_special_ids: list[int]

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def batch_decode(self, sequences: Sequence[Sequence[int]]) -> list[str]: ...

    def __call__(self, text: list[str], add_special_tokens: bool = ...) -> Any: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


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


def chat_template_tokens(tokenizer: Tokenizer) -> int:
    """Tokens the chat template adds around one user message, which the server counts against
    its context; 0 for a tokenizer without a template."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False,
                                             add_generation_prompt=True)
    except ValueError:  # transformers: the tokenizer has no chat template
        return 0
    return len(batch_codec(tokenizer)[1]([text])[0])
