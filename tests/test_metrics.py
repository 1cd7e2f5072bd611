import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpushare.measure.metric_catalog import flat
from gpushare.measure.metrics import (
    gpu_window,
    inter_token_latencies,
    is_good,
    percentile,
    summarize,
    token_lengths,
    tpot,
    ttft,
)
from gpushare.core.records import RequestRecord
from gpushare.measure.summary import LatencyStats

finite = st.floats(min_value=0, max_value=1e4, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=200), st.floats(min_value=0, max_value=100))
def test_percentile_lies_within_the_data(values, q):
    p = percentile(values, q)
    assert min(values) - 1e-9 <= p <= max(values) + 1e-9


@given(st.lists(finite, min_size=1, max_size=200), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotonic_in_q(values, q1, q2):
    lo, hi = sorted((q1, q2))
    assert percentile(values, lo) <= percentile(values, hi) + 1e-9


def test_percentile_interpolates_linearly_and_handles_empty():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0, 20.0], 99) == pytest.approx(19.9)
    assert percentile([], 50) is None


@st.composite
def chunk_streams(draw):
    n = draw(st.integers(min_value=1, max_value=40))
    gaps = draw(st.lists(st.floats(min_value=0, max_value=2), min_size=n, max_size=n))
    times = list(np.cumsum(gaps) + 1.0)
    tokens = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=n, max_size=n))
    return times, tokens


@given(chunk_streams())
def test_inter_token_latencies_cover_first_to_last_block(stream):
    times, tokens = stream
    itl = inter_token_latencies(times, tokens)
    assert len(itl) == sum(tokens[1:])
    assert math.isclose(sum(itl), times[-1] - times[0], rel_tol=1e-9, abs_tol=1e-9)
    assert all(v >= 0 for v in itl)


def test_inter_token_latencies_spread_a_gap_over_its_block():
    assert inter_token_latencies([1.0, 1.4, 2.0], [2, 1, 3]) == pytest.approx([0.4, 0.2, 0.2, 0.2])


def record(i=0, sent=0.0, first=0.1, end=1.0, out=10, status="ok", warmup=False, inp=5, endpoint="a"):
    return RequestRecord(index=i, endpoint=endpoint, warmup=warmup, scheduled=sent, sent=sent, first_token=first,
                         end=end, chunk_times=[first, end], chunk_tokens=[1, max(0, out - 1)],
                         input_tokens=inp, output_tokens=out, usage_reported=True, status=status)


def test_per_request_definitions():
    r = record(sent=1.0, first=1.25, end=3.25, out=9)
    assert ttft(r) == pytest.approx(0.25)
    assert tpot(r) == pytest.approx(2.0 / 8)
    assert tpot(record(out=1)) is None


requests = st.lists(
    st.tuples(finite, st.floats(0, 5), st.floats(0, 5), st.integers(1, 300), st.sampled_from(["ok", "ok", "timeout", "http_error"]), st.booleans()),
    min_size=1, max_size=60,
)


@given(requests)
@settings(max_examples=60)
def test_summary_counts_every_request_and_excludes_warmup(rows):
    recs = [record(i, s, s + a, s + a + b, out, status, warm) for i, (s, a, b, out, status, warm) in enumerate(rows)]
    s = summarize(recs)
    measured = [r for r in recs if not r.warmup]
    assert s.completed + s.failed == len(measured)
    assert sum(s.failed_by_kind.values()) == s.failed
    assert s.total_output_tokens == sum(r.output_tokens for r in measured if r.ok)
    if s.duration > 0:
        assert s.output_throughput == pytest.approx(s.total_output_tokens / s.duration)
    doc = flat(s)
    if s.completed:
        assert doc["p50_e2el_ms"] <= doc["p99_e2el_ms"] + 1e-9
        assert doc["p99_latency_s"] == pytest.approx(doc["p99_e2el_ms"] / 1000)
    else:
        assert doc["mean_ttft_ms"] is None


@given(requests, st.floats(0.01, 5), st.floats(0.001, 1))
@settings(max_examples=60)
def test_good_requests_are_completed_requests_meeting_every_slo(rows, ttft_slo, tpot_slo):
    recs = [record(i, s, s + a, s + a + b, out, status) for i, (s, a, b, out, status, _) in enumerate(rows)]
    slo = {"ttft": ttft_slo, "tpot": tpot_slo}
    s = summarize(recs, slo)
    expected = sum(
        r.ok and ttft(r) <= ttft_slo and (tpot(r) is None or tpot(r) <= tpot_slo) for r in recs
    )
    assert s.good_requests == expected <= s.completed
    doc = flat(s)
    assert doc["good_request_fraction"] == pytest.approx(expected / len(recs))


def test_summary_uses_vllm_key_names():
    doc = flat(summarize([record(0), record(1, sent=0.5, first=0.7, end=2.0)]))
    for key in ("completed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
                "output_throughput", "total_token_throughput"):
        assert key in doc
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p50", "p95", "p99"):
            assert f"{stat}_{metric}_ms" in doc
    assert doc["duration"] == pytest.approx(2.0)  # first send (0.0) to last end (2.0)
    assert doc["request_throughput"] == pytest.approx(1.0)


def test_token_lengths_are_the_mix_of_completed_measured_requests():
    assert token_lengths([record(0, inp=10, out=4), record(1, inp=30, out=8), RequestRecord(index=2, endpoint="a", input_tokens=20)]) == {
        "input_tokens_p50": 20.0, "input_tokens_p90": 28.0, "input_tokens_p99": pytest.approx(29.8),
        "input_tokens_max": 30, "output_tokens_p50": 6.0, "output_tokens_p90": pytest.approx(7.6),
        "output_tokens_p99": pytest.approx(7.96), "output_tokens_max": 8}
    assert set(token_lengths([]).values()) == {None}
    doc = flat(summarize([record(0, inp=100, out=7), record(1, inp=5, out=3, warmup=True),
                      record(2, inp=900, out=50, status="timeout")]))
    assert doc["input_tokens_max"] == doc["input_tokens_p50"] == 100 and doc["output_tokens_p99"] == 7


def test_latency_stats_are_population_statistics_in_ms():
    stats = LatencyStats.of([0.1, 0.2, 0.3])
    assert stats.mean == pytest.approx(200.0)
    assert stats.std == pytest.approx(np.std([100.0, 200.0, 300.0]))
    assert stats.p[50] == pytest.approx(200.0)


def test_failed_requests_are_never_good():
    assert not is_good(record(status="timeout"), {"ttft": 100.0})


def gpu_rows():
    rows = []
    for i in range(11):  # 10 s, one sample a second, 300 W, energy counter in J
        rows.append({"t": str(100.0 + i), "gpu": "0", "energy_j": str(5000.0 + 300.0 * i), "power_w": "300",
                     "gpu_util_pct": str(50 + i), "mem_used_mib": str(1000 + i),
                     "processes": f"11:10:{500 + i};12:10:100;21:20:{200 - i};99::7"})
    return rows


def test_gpu_window_energy_power_and_peak_memory():
    out = gpu_window(gpu_rows(), 102.0, 106.0, output_tokens=600, server_groups={"a": 10, "b": 20, "ext": None})
    assert out["gpu_samples"] == 5
    assert out["energy_j"] == pytest.approx(1200.0)  # 4 s at 300 W
    assert out["energy_per_output_token_j"] == pytest.approx(2.0)
    assert out["avg_power_w"] == pytest.approx(300.0)
    assert out["mean_gpu_util_pct"] == pytest.approx(54.0) and out["max_mem_used_mib"] == 1006
    assert out["peak_server_memory_mib"] == {"a": 606.0 + 0, "b": 198.0, "ext": None}
    assert gpu_window(gpu_rows(), 200.0, 300.0, 1, {}) is None
    assert gpu_window([{**r, "energy_j": ""} for r in gpu_rows()], 100, 110, 10, {})["energy_j"] is None


def test_gpu_window_ignores_mig_instance_rows():
    rows = gpu_rows() + [{"t": str(100.0 + i), "gpu": "0:1", "energy_j": "", "power_w": "", "mem_used_mib": "7"}
                         for i in range(11)]
    assert gpu_window(rows, 102.0, 106.0, 600, {})["energy_j"] == pytest.approx(1200.0)
