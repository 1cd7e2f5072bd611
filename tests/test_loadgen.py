"""The load generator against a local SSE server with known timings."""

import asyncio
import contextlib
import csv
import dataclasses
import itertools
import math
import time

import numpy as np
import pandas as pd
import pytest
from aiohttp import web

from gpushare.config import ApiConfig, LoadConfig
from gpushare.core.events import RequestFinished
from gpushare.load.loadgen import MAX_PREPARED, LoadGenerator, requests_for_duration
from gpushare.load.sending import Endpoint
from gpushare.measure.metric_catalog import flat
from gpushare.measure.metrics import summarize
from gpushare.core.records import RequestRecord, RequestSpec
from gpushare.load.request_log import RequestLog, read_request_log
from gpushare.load.workload import inter_arrival_gaps
from helpers import free_port
from sse_server import Behaviour, SseServer


@contextlib.asynccontextmanager
async def serving(*servers):
    """Serve each test server (anything with an aiohttp `app`) on a free port; yield their endpoints."""
    runners, endpoints = [], []
    for i, server in enumerate(servers):
        runner = web.AppRunner(server.app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        endpoints.append(Endpoint(f"s{i}", f"http://127.0.0.1:{port}", "test", tenant=f"t{i}"))
    try:
        yield endpoints
    finally:
        for runner in runners:
            await runner.cleanup()


def specs(n: int, max_tokens: int = 8, tenants=None) -> list[RequestSpec]:
    return [RequestSpec(index=i, prompt=f"prompt {i}", max_tokens=max_tokens,
                        tenant=None if tenants is None else tenants[i % len(tenants)]) for i in range(n)]


def run_load(behaviours, api=None, load=None, n_specs=50, max_tokens=8, arrivals=None, tenants=None):
    async def go():
        servers = [SseServer(b) for b in behaviours]
        async with serving(*servers) as endpoints:
            gen = LoadGenerator(endpoints, api or ApiConfig(), load or LoadConfig(concurrency=4, n_requests=10),
                                specs(n_specs, max_tokens, tenants), arrivals=arrivals)
            return await gen.run(), servers
    return asyncio.run(go())


def test_closed_loop_measures_server_timings():
    b = Behaviour(first_token_delay=0.05, token_delay=0.01)
    result, (server,) = run_load([b], load=LoadConfig(concurrency=2, n_requests=6, warmup_requests=2), max_tokens=11)
    recs = result.records
    assert [r.index for r in recs] == list(range(8))
    assert sum(r.warmup for r in recs) == 2
    assert all(r.ok for r in recs), [r.error for r in recs]
    for r in recs:
        assert r.output_tokens == 11 and r.usage_reported
        assert 0.05 <= r.first_token - r.sent < 0.5
        assert sum(r.chunk_tokens) == 11
    s = flat(summarize(recs))
    assert s["completed"] == 6 and s["failed"] == 0
    assert 9.0 <= s["median_itl_ms"] < 60
    assert 9.0 <= s["mean_tpot_ms"] < 60
    body = server.requests[0]
    assert body["stream"] and body["ignore_eos"] and body["stream_options"] == {"include_usage": True}


def test_closed_loop_keeps_concurrency_in_flight():
    b = Behaviour(first_token_delay=0.1)
    result, _ = run_load([b], load=LoadConfig(concurrency=4, n_requests=8, warmup_requests=0), max_tokens=2)
    sends = sorted(r.sent for r in result.records)
    # The first four go out together; the next four only once those finish.
    assert sends[3] - sends[0] < 0.05
    assert sends[4] - sends[0] >= 0.09


def test_chat_role_chunk_is_not_the_first_token_and_nonstreaming_works():
    b = Behaviour(first_token_delay=0.05)
    result, _ = run_load([b], api=ApiConfig(endpoint="chat"), load=LoadConfig(concurrency=1, n_requests=2, warmup_requests=0))
    for r in result.records:
        assert r.ok and r.output_tokens == 8 and sum(r.chunk_tokens) == 8
    result, _ = run_load([b], api=ApiConfig(stream=False), load=LoadConfig(concurrency=1, n_requests=2, warmup_requests=0))
    assert all(r.ok and r.output_tokens == 8 and r.first_token == r.end for r in result.records)


def test_failures_are_recorded_by_kind_never_dropped():
    load = LoadConfig(concurrency=2, n_requests=4, warmup_requests=0)
    result, _ = run_load([Behaviour(status=503)], load=load)
    assert [r.status for r in result.records] == ["http_error"] * 4
    assert "503" in result.records[0].error
    result, _ = run_load([Behaviour(fail_after=3)], load=load)
    assert {r.status for r in result.records} == {"stream_error"}
    assert "engine failed" in result.records[0].error
    result, _ = run_load([Behaviour(drop_after=2)], load=load)
    assert all(not r.ok for r in result.records)
    result, _ = run_load([Behaviour(first_token_delay=2)], api=ApiConfig(timeout_s=0.3), load=load)
    assert {r.status for r in result.records} == {"timeout"}
    s = summarize(result.records)
    assert s.failed == 4 and s.failed_by_kind == {"timeout": 4}


def test_missing_usage_falls_back_to_the_token_counter():
    async def go():
        async with serving(SseServer(Behaviour(usage=False))) as endpoints:
            gen = LoadGenerator(endpoints, ApiConfig(), LoadConfig(concurrency=1, n_requests=2, warmup_requests=0),
                                specs(2, 5), count_tokens=lambda text: len(text.split()))
            return await gen.run()
    result = asyncio.run(go())
    assert all(r.ok and not r.usage_reported and r.output_tokens == 5 for r in result.records)
    assert summarize(result.records).usage_missing == 2


def test_usage_that_disagrees_with_the_stream_is_kept_flagged_and_counted(tmp_path):
    """A server that streams 10 token events and reports 5: both counts are recorded, in the
    records and requests.csv, and the request is flagged and counted; one that agrees is not."""
    load = LoadConfig(concurrency=2, n_requests=4, warmup_requests=0)
    result, _ = run_load([Behaviour(reported_tokens=5), Behaviour()], load=load, max_tokens=10)
    for r in result.records:
        disagrees = r.endpoint == "s0"
        assert r.ok and r.streamed_tokens == 10 and r.output_tokens == (5 if disagrees else 10)
        assert r.usage_disagrees == disagrees
    assert summarize(result.records).usage_disagrees == 2
    with RequestLog(tmp_path) as log:
        for r in result.records:
            log(RequestFinished(r))
    rows = pd.read_csv(tmp_path / "requests.csv")
    assert rows["streamed_tokens"].eq(10).all()
    assert (rows["usage_disagrees"] == rows["endpoint"].eq("s0").astype(int)).all()

    plain, _ = run_load([Behaviour(reported_tokens=5)], api=ApiConfig(stream=False), load=load, max_tokens=10)
    assert all(r.streamed_tokens is None and not r.usage_disagrees for r in plain.records)  # nothing to compare


LOGGED = [
    RequestRecord(index=0, endpoint="s0", warmup=True, scheduled=1.0, sent=1.0000004, first_token=1.25, end=2.5,
                  chunk_times=[1.25, 2.0, 2.5], chunk_tokens=[1, 2, 1], input_tokens=8, output_tokens=4,
                  usage_reported=True, streamed_tokens=4, tenant="chat", in_window=False),
    RequestRecord(index=0, endpoint="s1", scheduled=3.0, sent=3.5, first_token=4.0, end=5.0, chunk_times=[4.0, 5.0],
                  chunk_tokens=[3, 3], input_tokens=8, output_tokens=5, usage_reported=True, streamed_tokens=6,
                  tenant="batch", step=2),
    RequestRecord(index=1, endpoint="s0", scheduled=6.0, sent=6.0, status="http_500", error='bad, "quoted"\nline',
                  tenant="chat", step=0),
    RequestRecord(index=2, endpoint="s0", scheduled=7.0, sent=7.0, first_token=None, end=8.0, output_tokens=3),
]


def test_the_request_log_reads_back_as_the_records_it_was_given(tmp_path):
    """One writer, one reader: every field of every record, times to the microsecond, a request
    being (tenant, index) in chunks.csv too; a log from before chunks.csv gives no chunk times."""
    with RequestLog(tmp_path) as log:
        for r in LOGGED:
            log(RequestFinished(r))
    back = read_request_log(tmp_path)
    rounded = [dataclasses.replace(r, sent=round(r.sent, 6)) for r in LOGGED]
    assert back == rounded
    (tmp_path / "chunks.csv").unlink()
    assert [r.chunk_times for r in read_request_log(tmp_path)] == [[]] * len(LOGGED)
    rows = list(csv.DictReader((tmp_path / "requests.csv").open()))
    with open(tmp_path / "requests.csv", "w", newline="") as f:  # the columns of an H200 log of 2026-11
        writer = csv.DictWriter(f, [c for c in rows[0] if c not in ("streamed_tokens", "usage_disagrees")],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert [r.streamed_tokens for r in read_request_log(tmp_path)] == [None] * len(LOGGED)


def test_round_robin_and_tenant_routing():
    load = LoadConfig(concurrency=3, n_requests=9, warmup_requests=0)
    result, servers = run_load([Behaviour(), Behaviour(), Behaviour()], load=load)
    assert [len(s.requests) for s in servers] == [3, 3, 3]
    assert [r.endpoint for r in result.records][:3] == ["s0", "s1", "s2"]
    tenant_load = LoadConfig(concurrency=3, n_requests=6, warmup_requests=0, routing="tenant")
    result, servers = run_load([Behaviour(), Behaviour()], load=tenant_load, tenants=["t1", "t1", "t0"])
    assert [len(s.requests) for s in servers] == [2, 4]
    assert all(r.endpoint == f"s{r.tenant[1]}" for r in result.records)


def test_open_loop_follows_the_arrival_schedule():
    rate = 50.0
    load = LoadConfig(request_rate=rate, n_requests=40, warmup_requests=0)
    arrivals = inter_arrival_gaps(np.random.default_rng(1), rate, 1.0)
    result, _ = run_load([Behaviour(first_token_delay=0.2)], load=load, arrivals=arrivals)
    recs = result.records
    assert len(recs) == 40 and all(r.ok for r in recs)
    expected = np.cumsum(list(itertools.islice(inter_arrival_gaps(np.random.default_rng(1), rate, 1.0), 40)))
    scheduled = np.array([r.scheduled for r in recs])
    assert np.allclose(scheduled - scheduled[0], expected - expected[0], atol=1e-6)
    # Open loop does not wait for answers: requests overlap although each takes 0.2 s.
    assert max(r.sent for r in recs) - min(r.sent for r in recs) < 0.2 * 40
    assert 0 <= min(r.sent - r.scheduled for r in recs) and max(r.sent - r.scheduled for r in recs) < 0.05


def test_duration_bound_run_stops_sending_in_time():
    load = LoadConfig(concurrency=2, duration_s=0.5, warmup_requests=2)
    result, _ = run_load([Behaviour(first_token_delay=0.05)], load=load, n_specs=1000)
    measured = [r for r in result.records if not r.warmup]
    assert 10 <= len(measured) <= 40
    assert max(r.sent for r in measured) - result.started <= 0.5
    assert result.built_in_window == 0  # every request of the window was built before it


def test_requests_for_duration_over_estimates_what_a_window_sends():
    def warm(*latencies):
        return [RequestRecord(index=i, endpoint="s", warmup=True, scheduled=0.0, sent=1.0, end=1.0 + e, status="ok")
                for i, e in enumerate(latencies)]

    closed = LoadConfig(concurrency=4, duration_s=10, warmup_requests=2)
    assert requests_for_duration(closed, warm(0.8, 0.5)) == math.ceil(1.2 * 10 * 4 / 0.5) + 16
    assert requests_for_duration(closed, []) == 16  # no warm-up latency to go by: 4 x concurrency
    assert requests_for_duration(closed, warm(1e-6)) == MAX_PREPARED
    failed = warm(0.001)[0]
    failed.status = "http_error"
    assert requests_for_duration(closed, [failed, *warm(0.5)]) == 112  # failures say nothing of latency
    opened = LoadConfig(request_rate=10, duration_s=60)
    assert requests_for_duration(opened, []) == 736


def test_abort_cancels_in_flight_requests_and_records_them():
    async def go():
        async with serving(SseServer(Behaviour(first_token_delay=5))) as endpoints:
            gen = LoadGenerator(endpoints, ApiConfig(), LoadConfig(concurrency=3, n_requests=10, warmup_requests=0),
                                specs(10))
            task = asyncio.ensure_future(gen.run())
            await asyncio.sleep(0.3)
            gen.abort("server s0 exited")
            return await asyncio.wait_for(task, 5)
    result = asyncio.run(go())
    assert result.aborted == "server s0 exited"
    assert len(result.records) == 3
    assert {r.status for r in result.records} == {"aborted"}


def test_same_seed_same_arrivals():
    a = list(itertools.islice(inter_arrival_gaps(np.random.default_rng(7), 10, 0.5), 100))
    b = list(itertools.islice(inter_arrival_gaps(np.random.default_rng(7), 10, 0.5), 100))
    assert a == b
    assert np.mean(a) == pytest.approx(0.1, rel=0.35)


def test_abort_ends_an_open_loop_waiting_for_a_far_arrival():
    """Ctrl-C must not wait for the next arrival, however low the rate."""
    async def go():
        async with serving(SseServer()) as endpoints:
            load = LoadConfig(request_rate=1e-9, n_requests=10, warmup_requests=0)
            gen = LoadGenerator(endpoints, ApiConfig(), load, specs(10),
                                arrivals=inter_arrival_gaps(np.random.default_rng(0), 1e-9, 1.0))
            task = asyncio.ensure_future(gen.run())
            await asyncio.sleep(0.3)
            t0 = time.perf_counter()
            gen.abort("interrupted")
            result = await asyncio.wait_for(task, 1.0)
            return result, time.perf_counter() - t0
    result, took = asyncio.run(go())
    assert took < 0.5
    assert result.aborted == "interrupted"
    assert result.records == []  # the first arrival was decades away


def test_overlapping_measured_windows_share_one_gc_freeze():
    """Loads side by side in one process: what was alive stays frozen until the last window
    closes, and the collector stays on throughout, for the other threads too."""
    import gc
    import threading

    from gpushare.load.loadgen import frozen_gc

    assert gc.isenabled()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with frozen_gc():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second():
        first_in.wait(5)
        with frozen_gc():
            second_in.set()
            first_out.wait(5)
            seen["after_first_closed"] = (gc.isenabled(), gc.get_freeze_count() > 0)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"after_first_closed": (True, True)}
    assert gc.isenabled() and gc.get_freeze_count() == 0
