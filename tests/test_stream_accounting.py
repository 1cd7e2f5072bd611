"""The stream parser counts tokens per network block exactly, however the bytes are split."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpushare.loadgen import StreamAccounting
from sse_server import _chat_event, _completion_event, sse


def token_text(i: int, n: int, empty: frozenset) -> str:
    return "" if i in empty else f" t{i}"


def stream(n_tokens: int, chat: bool, usage: bool = True, empty=frozenset(), crlf: bool = False) -> bytes:
    """vLLM-shaped stream; tokens whose index is in `empty` carry no text (EOS, partial characters)."""
    out = b""
    if chat:
        out += sse(_chat_event({"role": "assistant", "content": ""}))
    for i in range(n_tokens):
        finish = "length" if i == n_tokens - 1 else None
        text = token_text(i, n_tokens, empty)
        out += sse(_chat_event({"content": text}, finish) if chat else _completion_event(text, finish))
    if usage:
        out += sse({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n_tokens, "total_tokens": 7 + n_tokens}})
    out += sse("[DONE]")
    return out.replace(b"\n", b"\r\n") if crlf else out


def feed(data: bytes, cuts: list[int]) -> StreamAccounting:
    acc = StreamAccounting()
    bounds = [0] + sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        acc.feed(data[a:b], float(i))
    return acc


@given(
    n=st.integers(min_value=1, max_value=60),
    chat=st.booleans(),
    empty=st.frozensets(st.integers(min_value=0, max_value=59), max_size=5),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=40000), max_size=30),
)
@settings(max_examples=300)
def test_token_count_survives_any_split(n, chat, empty, crlf, cuts):
    """Every token event counts, with or without text, wherever the network splits the bytes."""
    data = stream(n, chat, empty=empty, crlf=crlf)
    acc = feed(data, cuts)
    outcome = acc.finish()
    assert outcome.done and not outcome.error
    assert outcome.usage["completion_tokens"] == n
    assert sum(acc.tokens) == n
    assert all(t > 0 for t in acc.tokens)
    assert acc.times == sorted(acc.times)
    assert acc.text() == "".join(token_text(i, n, empty) for i in range(n))


def test_first_token_is_the_first_content_event_not_the_role_chunk():
    data = stream(3, chat=True)
    role_end = data.index(b"\n\n") + 2
    first_token_end = data.index(b"\n\n", role_end) + 2
    acc = feed(data, [role_end, first_token_end])
    acc.finish()
    assert acc.times[0] == 1.0  # block 0 held only the role chunk
    assert acc.tokens[0] == 1


def test_one_block_holding_everything():
    acc = feed(stream(128, chat=False), [])
    outcome = acc.finish()
    assert acc.tokens == [128] and acc.times == [0.0] and outcome.usage["completion_tokens"] == 128


def test_error_event_and_missing_done_are_reported():
    data = sse(_completion_event(" a")) + sse({"error": {"message": "engine failed", "code": 500}})
    outcome = feed(data, [5]).finish()
    assert outcome.error == "engine failed" and not outcome.done

    cut = stream(5, chat=False)
    outcome = feed(cut[: cut.index(b"[DONE]") - 6], []).finish()
    assert not outcome.done and not outcome.error


def test_long_stream_keeps_exact_count_with_small_blocks():
    n = 500
    data = stream(n, chat=False)
    acc = feed(data, list(range(0, len(data), 97)))
    outcome = acc.finish()
    assert sum(acc.tokens) == n and outcome.usage["completion_tokens"] == n


@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("step", [1, 2, 3, 5])
def test_tiny_reads_keep_the_count(crlf, step):
    """Reads shorter than the event separator (one byte at a time, say) must not lose a separator."""
    data = stream(40, chat=True, crlf=crlf)
    acc = feed(data, list(range(0, len(data), step)))
    outcome = acc.finish()
    assert sum(acc.tokens) == 40 and outcome.done and outcome.usage["completion_tokens"] == 40
