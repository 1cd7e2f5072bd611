"""The load generator against misbehaving servers: each fault is recorded as the failure it
is, per request, and nothing raises."""

import asyncio
import subprocess
import time
import urllib.request

import numpy as np
import pytest

from fault_server import FaultServer
from gpushare.config import ApiConfig, LoadConfig
from gpushare.load.loadgen import LoadGenerator
from gpushare.load.sending import Endpoint
from gpushare.measure.metrics import summarize
from helpers import FAULT_SERVER, free_port
from sse_server import SseServer
from test_loadgen import serving, specs

LOAD = LoadConfig(concurrency=2, n_requests=4, warmup_requests=0)


def run_against(*servers, api=None, load=LOAD, max_tokens=8):
    async def go():
        async with serving(*servers) as endpoints:
            gen = LoadGenerator(endpoints, api or ApiConfig(), load, specs(load.n_requests, max_tokens))
            return await gen.run()
    result = asyncio.run(go())
    assert len(result.records) == load.n_requests
    return result.records


def outcomes(records):
    return {(r.status, r.error) for r in records}


def test_http_500_is_an_http_error():
    records = run_against(FaultServer("http500"))
    assert {r.status for r in records} == {"http_error"}
    assert all(r.error.startswith("HTTP 500: ") and "internal server error" in r.error for r in records)


def test_connection_closed_mid_stream_is_a_connection_error():
    records = run_against(FaultServer("midstream_close"))
    assert {r.status for r in records} == {"connection_error"}
    assert all("ClientPayloadError" in r.error for r in records)


@pytest.mark.parametrize("mode", ["garbage_start", "garbage_middle", "garbage_only"])
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_malformed_event_anywhere_fails_the_stream(mode, endpoint):
    records = run_against(FaultServer(mode), api=ApiConfig(endpoint=endpoint))
    assert outcomes(records) == {("stream_error", "malformed event: b'data: this is not JSON'")}


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_broken_last_token_event_fails_the_stream(endpoint):
    records = run_against(FaultServer("broken_last_token"), api=ApiConfig(endpoint=endpoint))
    assert outcomes(records) == {("stream_error", "not JSON: b'{\"choices\": [{\"text\": \" tok\"'")}


def test_a_stream_without_tokens_fails():
    records = run_against(FaultServer("no_tokens"))
    assert outcomes(records) == {("stream_error", "the stream carried no tokens")}


@pytest.mark.parametrize("mode, error", [
    ("non_json_body", "not JSON: b'<html><body><h1>502 Bad Gateway</h1></body></html>'"),
    ("list_body", "not a JSON object: b'[{\"text\": \" tok\"}]'"),
    ("string_body", "not a JSON object: b'\"ok\"'"),
    ("no_choices", "no choices in the response"),
])
def test_a_non_streamed_answer_that_is_no_completion_is_a_bad_response(mode, error):
    records = run_against(FaultServer(mode), api=ApiConfig(stream=False))
    assert outcomes(records) == {("bad_response", error)}
    assert all(r.output_tokens is None and r.first_token is None for r in records)


def test_a_hanging_server_times_out_after_the_api_timeout():
    records = run_against(FaultServer("hang"), api=ApiConfig(timeout_s=0.5))
    assert outcomes(records) == {("timeout", "no complete answer within 0.5 s")}
    assert all(0.5 <= r.end - r.sent < 1.0 for r in records)


def test_slow_tokens_are_ok_and_counted():
    records = run_against(FaultServer("slow_tokens", token_gap=0.2), max_tokens=3)
    assert outcomes(records) == {("ok", "")}
    for r in records:
        assert r.output_tokens == 3 and sum(r.chunk_tokens) == 3 and len(r.chunk_times) == 3
        assert np.diff(r.chunk_times).min() >= 0.15


def test_failed_and_ok_requests_are_counted_apart():
    """Round-robin over a sound server and a faulty one: half the requests fail, as themselves."""
    records = run_against(SseServer(), FaultServer("garbage_middle"),
                          load=LoadConfig(concurrency=2, n_requests=6, warmup_requests=0))
    assert {(r.endpoint, r.status) for r in records} == {("s0", "ok"), ("s1", "stream_error")}
    s = summarize(records)
    assert s.completed == 3 and s.failed == 3 and s.failed_by_kind == {"stream_error": 3}


def test_runs_as_a_server_command():
    port = free_port()
    proc = subprocess.Popen([*FAULT_SERVER, "--host", "127.0.0.1",
                             "--port", str(port), "--mode", "garbage_only", "--dtype", "auto"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    assert resp.status == 200
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the fault server did not start"
                time.sleep(0.1)
        endpoint = Endpoint("f", f"http://127.0.0.1:{port}", "test")
        result = asyncio.run(LoadGenerator([endpoint], ApiConfig(), LOAD, specs(4)).run())
        assert {r.status for r in result.records} == {"stream_error"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
