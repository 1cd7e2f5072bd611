"""Workloads and configuration: lengths, datasets, seeds, overrides, the GPU monitor's fallback."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpushare import cli
from gpushare.plan_config import parse_plan
from gpushare.config import ApiConfig, LoadConfig, ScenarioConfig, parse_config
from gpushare.config_file import apply_overrides, read_config_file
from gpushare.load.workloads.dataset import DatasetWorkload
from gpushare.load.workloads.synthetic import SyntheticWorkload
from gpushare.errors import ConfigError
from gpushare.serving.models import embedded_folder, resolve_model
from gpushare.measure.monitor import GPU_COLUMNS, GpuMonitor
from gpushare.load.tokens import batch_codec, random_token_ids
from gpushare.load.workload import RequestSource, load_label, load_tokenizer, random_streams
from helpers import error_line


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(embedded_folder("smollm2")))


length_configs = st.one_of(
    st.integers(1, 500),
    st.builds(lambda lo, span: {"dist": "uniform", "low": lo, "high": lo + span}, st.integers(1, 300), st.integers(0, 300)),
    st.builds(lambda m, s: {"dist": "normal", "mean": m, "std": s, "max": 400}, st.floats(1, 300), st.floats(0, 100)),
)


@given(length_configs, st.integers(0, 2**32 - 1))
@settings(max_examples=100)
def test_length_distributions_stay_in_bounds(spec, seed):
    workload = SyntheticWorkload(input_tokens=spec, output_tokens=spec)
    values = workload.output_tokens.sample(np.random.default_rng(seed), 200)
    assert values.min() >= 1
    if isinstance(spec, int):
        assert (values == spec).all()
    elif spec["dist"] == "uniform":
        assert spec["low"] <= values.min() and values.max() <= spec["high"]
    else:
        assert values.max() <= 400


def test_synthetic_prompts_have_the_requested_lengths_and_repeat_with_the_seed(tokenizer):
    workload = SyntheticWorkload(input_tokens={"dist": "uniform", "low": 20, "high": 60}, output_tokens=32)

    def build(seed):
        source = RequestSource(workload, ApiConfig(), tokenizer, random_streams(seed)[0])
        return [source[i] for i in range(20)]

    first, again, other = build(3), build(3), build(4)
    assert first == again and first != other
    batched = RequestSource(workload, ApiConfig(), tokenizer, random_streams(3)[0])
    batched.prepare(20)  # one batch of tokenizer calls: the same prompts as one at a time
    assert [batched[i] for i in range(20)] == first
    for spec in first:
        assert 20 <= spec.input_tokens <= 60 and spec.max_tokens == 32
        assert abs(len(tokenizer.encode(spec.prompt, add_special_tokens=False)) - spec.input_tokens) <= 2
    chat = RequestSource(workload, ApiConfig(endpoint="chat"), tokenizer, random_streams(3)[0])[0]
    assert chat.prompt == [{"role": "user", "content": first[0].prompt}]


def test_batch_codec_agrees_with_the_tokenizers_python_calls(tokenizer):
    rng = np.random.default_rng(5)
    ids = [random_token_ids(tokenizer, rng, n) for n in (1, 17, 300)]
    decode, encode = batch_codec(tokenizer)
    texts = decode(ids)
    assert texts == tokenizer.batch_decode(ids)
    assert encode(texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_dataset_rows_sharegpt_and_prompt_rows(tmp_path, tokenizer):
    rows = [
        {"prompt": "Say hi", "max_tokens": 7, "tenant": "a"},
        {"conversations": [{"from": "human", "value": "What is MPS?"}, {"from": "gpt", "value": "A CUDA service that lets processes share a GPU."}]},
        {"conversations": [{"from": "gpt", "value": "no human turn"}]},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    source = RequestSource(DatasetWorkload(kind="dataset", path=path), ApiConfig(), tokenizer, np.random.default_rng(0))
    assert source[0].prompt == "Say hi" and source[0].max_tokens == 7 and source[0].tenant == "a"
    expected = len(tokenizer.encode(rows[1]["conversations"][1]["value"], add_special_tokens=False))
    assert source[1].prompt == "What is MPS?" and source[1].max_tokens == expected
    assert source[2].prompt == "Say hi"  # the row without a human turn is skipped; rows repeat

    as_array = tmp_path / "data.json"
    as_array.write_text(json.dumps([{"prompt": "x"}]))
    source = RequestSource(DatasetWorkload(kind="dataset", path=as_array, output_tokens=5), ApiConfig(), tokenizer,
                           np.random.default_rng(0))
    assert source[0].max_tokens == 5

    with pytest.raises(ConfigError, match="row 1 gives no usable max_tokens"):
        RequestSource(DatasetWorkload(kind="dataset", path=as_array), ApiConfig(), tokenizer, np.random.default_rng(0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        RequestSource(DatasetWorkload(kind="dataset", path=bad, output_tokens=3), ApiConfig(), tokenizer,
                      np.random.default_rng(0))



@pytest.mark.parametrize("given", ["true", "false", '"7"', "0", "1.5"])
def test_a_rows_max_tokens_is_a_whole_number_not_a_bool(tmp_path, given):
    path = tmp_path / "data.jsonl"
    path.write_text(f'{{"prompt": "a", "max_tokens": 3}}\n{{"prompt": "b", "max_tokens": {given}}}\n')
    with pytest.raises(ConfigError) as err:
        RequestSource(DatasetWorkload(kind="dataset", path=path, output_tokens=3), ApiConfig(), None,
                      np.random.default_rng(0))
    assert str(err.value) == f"workload.path: {path} row 2: max_tokens must be a whole number >= 1 (got {given})"


@pytest.mark.parametrize("content, expected", [
    (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', "line 2 is not UTF-8 text (byte b'\\xe9' at offset 31)"),
    (b"", "is empty"),
    (b"\n \n", "is empty"),
    (b'{"prompt": "a"}\n["a list"]\n', 'line 2 is not a JSON object (got ["a list"])'),
    (b'[{"prompt": "a"}, 7]', "item 2 is not a JSON object (got 7)"),
])
def test_a_bad_dataset_is_one_line_naming_the_file_and_where(tmp_path, content, expected):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        RequestSource(DatasetWorkload(kind="dataset", path=path, output_tokens=3), ApiConfig(), None,
                      np.random.default_rng(0))
    assert str(err.value) == f"workload.path: {path} {expected}" and err.value.exit_code == 2


def test_a_non_utf8_dataset_stops_the_run_with_one_line(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n')
    config = tmp_path / "scenario.yaml"
    config.write_text(f"workload:\n  kind: dataset\n  path: {data}\n  output_tokens: 4\n")
    assert cli.main(["run", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"error: workload.path: {data} line 2 is not UTF-8 text (byte b'\\xff' at offset 29)")
    assert not (tmp_path / "runs").exists()


def test_json_lines_split_only_at_newlines(tmp_path):
    """A prompt may hold U+2028 unescaped (json.dumps(ensure_ascii=False)); it is not a line break."""
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "one\u2028two", "max_tokens": 2}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    source = RequestSource(DatasetWorkload(kind="dataset", path=path), ApiConfig(), None, np.random.default_rng(0))
    assert source[0].prompt == "one\u2028two"

def test_load_defaults_and_labels():
    assert LoadConfig().concurrency == 8 and LoadConfig().n_requests == 100
    open_loop = LoadConfig(request_rate=2.5)
    assert open_loop.open_loop and open_loop.concurrency is None and load_label(open_loop) == "r2.5"
    assert load_label(LoadConfig(concurrency=16)) == "c16"
    assert LoadConfig(duration_s=30).n_requests is None


def test_overrides_apply_to_a_copy_and_validate():
    raw = {"load": {"concurrency": 2}, "scenario": "x"}
    merged = apply_overrides(raw, {"load.concurrency": 9, "seed": None, "load.n_requests": 5})
    assert raw == {"load": {"concurrency": 2}, "scenario": "x"}
    config = parse_config(merged)
    assert config.load.concurrency == 9 and config.load.n_requests == 5 and config.seed == 0


def test_scenario_rules():
    with pytest.raises(ConfigError, match="baseline runs one server"):
        parse_config({"servers": [{"port": 1}, {"port": 2}]})
    with pytest.raises(ConfigError, match="share a host and port"):
        parse_config({"sharing": {"mode": "timeslice"}, "servers": [{"port": 1}, {"port": 1}]})
    with pytest.raises(ConfigError, match="external server needs 'url'"):
        parse_config({"servers": [{"engine": "external"}]})
    config = parse_config({"sharing": {"mode": "timeslice"}, "servers": [{"port": 1}, {"port": 2, "name": "b"}]})
    assert config.server_names() == ["server-0", "b"]
    assert isinstance(ScenarioConfig().workload, SyntheticWorkload)


def test_model_resolution(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        resolve_model(str(folder), None)
    (folder / "config.json").write_text("{}")
    assert resolve_model(str(folder), None).served_name == "m"
    assert resolve_model("org/model", "served").path == "org/model"
    embedded = resolve_model("smollm2", None)
    assert embedded.embedded and embedded.served_name == "smollm2"


def test_monitor_without_nvml_writes_only_the_header(tmp_path, monkeypatch):
    import gpushare.measure.monitor as monitor

    monkeypatch.setattr(monitor, "_nvml", lambda: None)
    said = []
    with GpuMonitor(tmp_path / "gpu.csv", 0.01, say=said.append) as mon:
        assert not mon.available
    assert (tmp_path / "gpu.csv").read_text().strip() == ",".join(GPU_COLUMNS)
    assert len(said) == 1 and "NVML is not available" in said[0]


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml")))
def test_shipped_configs_are_valid(path):
    raw = read_config_file(Path(path))
    if "plan" in raw:  # a plan file (gpushare plan), not a scenario
        parse_plan(raw)
    else:
        parse_config(raw)
