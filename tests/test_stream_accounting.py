"""The stream parser counts tokens per network block exactly, however the bytes are split."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpushare.load.stream import _TAIL_BYTES, StreamAccounting
from sse_server import _chat_event, _completion_event, sse


def token_text(i: int, n: int, empty: frozenset) -> str:
    return "" if i in empty else f" t{i}"


def stream(n_tokens: int, chat: bool, usage: bool = True, empty=frozenset(), crlf: bool = False,
           no_space: bool = False, inserted: dict[int, bytes] | None = None) -> bytes:
    """vLLM-shaped stream; tokens whose index is in `empty` carry no text (EOS, partial characters).
    `inserted` maps positions in the list of events to events put there (comments, garbage);
    `no_space` writes `data:{...}` as some servers do."""
    events = []
    if chat:
        events.append(sse(_chat_event({"role": "assistant", "content": ""})))
    for i in range(n_tokens):
        finish = "length" if i == n_tokens - 1 else None
        text = token_text(i, n_tokens, empty)
        events.append(sse(_chat_event({"content": text}, finish) if chat else _completion_event(text, finish)))
    if usage:
        events.append(sse({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n_tokens,
                                                    "total_tokens": 7 + n_tokens}}))
    events.append(sse("[DONE]"))
    for position, event in sorted((inserted or {}).items(), reverse=True):
        events.insert(position, event)
    out = b"".join(events)
    out = out.replace(b"data: ", b"data:") if no_space else out
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


COMMENT = b": keep-alive\n\n"
GARBAGE = [b"data: this is not JSON\n\n", b"<html>502 Bad Gateway</html>\n\n", b"data: [1, 2]\n\n",
           b'data: "text"\n\n', b"data:\n\n"]


@given(
    n=st.integers(min_value=1, max_value=40),
    chat=st.booleans(),
    crlf=st.booleans(),
    no_space=st.booleans(),
    comments=st.frozensets(st.integers(min_value=0, max_value=44), max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=10000), max_size=30),
)
@settings(max_examples=300)
def test_well_formed_variants_pass_the_check(n, chat, crlf, no_space, comments, cuts):
    """`data:` without a space, CRLF and comment lines anywhere are all well formed; comments are no tokens."""
    data = stream(n, chat, crlf=crlf, no_space=no_space, inserted=dict.fromkeys(comments, COMMENT))
    acc = feed(data, cuts)
    outcome = acc.finish()
    assert outcome.done and outcome.error == ""
    assert sum(acc.tokens) == n and outcome.usage["completion_tokens"] == n


@given(
    n=st.integers(min_value=0, max_value=40),
    chat=st.booleans(),
    crlf=st.booleans(),
    no_space=st.booleans(),
    garbage=st.sampled_from(GARBAGE),
    position=st.integers(min_value=0, max_value=44),
    cuts=st.lists(st.integers(min_value=0, max_value=10000), max_size=30),
)
@settings(max_examples=300)
def test_a_malformed_event_anywhere_is_reported_with_its_bytes(n, chat, crlf, no_space, garbage, position, cuts):
    """At the start, in the middle, in the tail, alone, however the blocks split: only the
    first and last events are parsed, the others are checked by their first bytes."""
    data = stream(n, chat, crlf=crlf, no_space=no_space, inserted={position: garbage})
    outcome = feed(data, cuts).finish()
    event = (garbage.replace(b"data: ", b"data:") if no_space else garbage)[:-2]
    assert outcome.error.split("; ")[0] == f"malformed event: {event!r}"


def test_a_stream_of_garbage_and_done_has_no_tokens():
    acc = feed(GARBAGE[0] * 3 + sse("[DONE]"), [7, 30])
    outcome = acc.finish()
    assert acc.tokens == [] and outcome.done
    assert outcome.error == "malformed event: b'data: this is not JSON'"


BROKEN = b'data: {"choices": [{"text": " t\n\n'
"""An event that opens as token events do (`data: {`) but is not JSON: the byte checks pass it."""


@given(
    n=st.integers(min_value=1, max_value=40),
    chat=st.booleans(),
    crlf=st.booleans(),
    no_space=st.booleans(),
    replace_last=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10000), max_size=30),
)
@settings(max_examples=300)
def test_a_broken_last_token_event_is_parsed_and_reported(n, chat, crlf, no_space, replace_last, cuts):
    """The last token event is parsed, whether it replaces the last token or follows it: an
    event that opens like JSON and is broken inside fails the stream, and is no token."""
    last_token = n + chat - 1  # its position in the list of events
    data = stream(n, chat, crlf=crlf, no_space=no_space, inserted={last_token + 1: BROKEN})
    if replace_last:  # the broken event is the stream's only last token event
        events = data.split(b"\r\n\r\n" if crlf else b"\n\n")
        del events[last_token]
        data = (b"\r\n\r\n" if crlf else b"\n\n").join(events)
    acc = feed(data, cuts)
    outcome = acc.finish()
    assert outcome.error.startswith("not JSON: b'{\"choices\": [{\"text\": \" t'")
    assert sum(acc.tokens) == n - replace_last


@pytest.mark.parametrize("tail", [_TAIL_BYTES - 100, _TAIL_BYTES + 100, 3 * _TAIL_BYTES])
def test_a_last_token_event_longer_than_the_tail_is_parsed_whole(tail):
    """However long the last token event, it is parsed whole, broken or not."""
    long_text = "x" * tail
    good = stream(3, chat=False).replace(b'"text": " t2"', f'"text": "{long_text}"'.encode())
    acc = feed(good, list(range(0, len(good), 1000)))
    outcome = acc.finish()
    assert outcome.error == "" and outcome.done and sum(acc.tokens) == 3
    broken = good.replace(f'"text": "{long_text}"'.encode(), f'"text": "{long_text}'.encode())
    outcome = feed(broken, list(range(0, len(broken), 1000))).finish()
    assert outcome.error.startswith("not JSON: ")


def test_between_the_first_and_last_token_an_event_that_opens_like_json_is_not_parsed():
    """The check's one limit, kept for the client's cost: in the middle, such an event counts unread."""
    data = stream(5, chat=False, inserted={2: BROKEN})
    acc = feed(data, [])
    outcome = acc.finish()
    assert outcome.error == "" and sum(acc.tokens) == 6
