"""Server process handling with real child processes: readiness, logs, and group teardown."""

import http.server
import sys
import threading
import time
from pathlib import Path

import pytest

from gpushare.config import ServerConfig
from gpushare.core.events import PhaseChanged
from gpushare.core.processes import process_alive
from gpushare.experiment.run.watch import ServerWatch
from gpushare.serving.engines import LaunchPlan, redact
from gpushare.serving.engines.external import ExternalEngine
from gpushare.serving.engines.vllm import VllmEngine
from gpushare.errors import ConfigError, RunFailure
from gpushare.serving.server_env import passed_on, server_environment
from gpushare.serving.servers import ServerFleet, ServerHandle, ensure_port_free, scrape_counters
from helpers import SSE_SERVER, alive, free_port, server_pids, wait_until


def sse_plan(name: str, port: int, *extra: str, timeout: float = 30) -> LaunchPlan:
    return LaunchPlan(name, f"http://127.0.0.1:{port}", [*SSE_SERVER, "--port", str(port), *extra],
                      ready_timeout_s=timeout)


def test_server_group_is_stopped_including_a_worker_that_ignores_sigterm(tmp_path):
    port = free_port()
    handle = ServerHandle(sse_plan("s", port, "--child-ignoring-sigterm"), tmp_path / "s.log")
    handle.start()
    try:
        assert handle.wait_ready(poll_s=0.1) > 0
        pids = server_pids(tmp_path / "s.log")
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        began = time.monotonic()
        handle.stop(grace_s=1.0)
    assert not any(alive(p) for p in pids)
    assert time.monotonic() - began < 10
    handle.stop()  # idempotent


def test_readiness_failures_name_the_server_and_quote_its_log(tmp_path):
    dies = LaunchPlan("dies", "http://127.0.0.1:1", [sys.executable, "-c", "print('bad flag --x'); raise SystemExit(3)"])
    handle = ServerHandle(dies, tmp_path / "d.log")
    handle.start()
    with pytest.raises(RunFailure, match=r"server dies exited with code 3 .*bad flag --x"):
        handle.wait_ready(poll_s=0.05)

    hangs = LaunchPlan("hangs", f"http://127.0.0.1:{free_port()}",
                       [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)"],
                       ready_timeout_s=0.5)
    handle = ServerHandle(hangs, tmp_path / "h.log")
    handle.start()
    try:
        with pytest.raises(RunFailure, match=r"not ready .* after 0.5 s.*loading"):
            handle.wait_ready(poll_s=0.05)
    finally:
        handle.stop(grace_s=1)
    assert not alive(handle.pid)

    missing = LaunchPlan("missing", "http://127.0.0.1:1", ["/nonexistent/vllm"])
    with pytest.raises(RunFailure, match="cannot start /nonexistent/vllm"):
        ServerHandle(missing, tmp_path / "m.log").start()


def test_fleet_starts_in_order_and_stops_all_on_error(tmp_path):
    ports = [free_port(), free_port()]
    order = []
    fleet = ServerFleet([sse_plan("a", ports[0]), sse_plan("b", ports[1])], tmp_path)
    with pytest.raises(RuntimeError):
        with fleet:
            fleet.start(on_ready=lambda h: order.append((h.name, all(x.exit_code() is None for x in fleet.handles))))
            assert fleet.first_dead() is None
            raise RuntimeError("boom")
    assert [name for name, _ in order] == ["a", "b"]
    assert not any(alive(h.pid) for h in fleet.handles)
    assert (tmp_path / "server-0.log").exists() and (tmp_path / "server-1.log").exists()


def test_port_in_use_is_refused(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"servers\\[0\\].port: port {port} on 127.0.0.1 is already in use"):
            ensure_port_free("127.0.0.1", port, "servers[0].port")


def test_vllm_plan_binds_loopback_and_caps_memory(tmp_path):
    server = ServerConfig(port=8123, gpu_memory_utilization=0.42, args=["--enforce-eager"], env={"A": "1"})
    plan = VllmEngine.plan("s", server, "/models/m", "m", tmp_path)
    argv = plan.argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.42"
    assert argv[-1] == "--enforce-eager"
    assert plan.env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm") and plan.env["A"] == "1"
    custom = VllmEngine.plan("s", ServerConfig(command=["python3", "-m", "vllm.entrypoints.cli.main", "serve"]),
                               "m", "m", tmp_path)
    assert custom.argv[:4] == ["python3", "-m", "vllm.entrypoints.cli.main", "serve"]


def test_redact_hides_keys():
    assert redact(["serve", "--api-key", "s3cret", "--hf-token=abc", "--port", "1"]) == [
        "serve", "--api-key", "***", "--hf-token=***", "--port", "1"]


class _Metrics(http.server.BaseHTTPRequestHandler):
    """A /metrics page whose running-request gauge falls by one at each read."""

    held = [0]

    def do_GET(self):  # noqa: N802 - http.server's name
        running = max(0, self.held[0])
        self.held[0] -= 1
        body = (f'vllm:num_requests_running{{model_name="m"}} {running}.0\n'
                f'vllm:num_requests_waiting{{model_name="m"}} 0.0\n').encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_wait_idle_returns_once_the_servers_gauges_reach_zero(tmp_path):
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        _Metrics.held[0] = 3
        gauged = LaunchPlan("a", url, None, queue_gauges=list(VllmEngine.queue_gauges))
        ServerFleet([gauged], tmp_path).wait_idle(limit_s=30, poll_s=0.01)
        assert _Metrics.held[0] == -1  # read at 3, 2, 1 and 0 requests held, then no more

        # A server without the gauges gets the whole limit.
        t0 = time.monotonic()
        ServerFleet([gauged, LaunchPlan("b", url, None)], tmp_path).wait_idle(limit_s=0.3, poll_s=0.01)
        assert time.monotonic() - t0 >= 0.3
    finally:
        httpd.shutdown()


class _Page(http.server.BaseHTTPRequestHandler):
    """A fixed /metrics page (`body`)."""

    body = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_an_external_vllm_server_is_read_for_vllms_counters_and_gauges(tmp_path):
    """A server someone else runs that is vLLM: its counters (summed over labels) and its
    gauges of requests held are read as a launched vLLM's are; one exposing other metrics has
    none, so its run records none rather than zeros."""
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        plan = ExternalEngine.plan("x", ServerConfig(engine="external", url=url + "/"), "m", "m", tmp_path)
        assert plan.argv is None and plan.base_url == url
        _Page.body = (b'vllm:generation_tokens_total{engine="0",model_name="m"} 30.0\n'
                      b'vllm:generation_tokens_total{engine="1",model_name="m"} 12.0\n'
                      b'vllm:prompt_tokens_total{engine="0",model_name="m"} 7.0\n'
                      b'vllm:num_requests_running{model_name="m"} 0.0\n'
                      b'vllm:num_requests_waiting{model_name="m"} 0.0\n')
        assert scrape_counters(plan) == {"generation_tokens": 42.0, "prompt_tokens": 7.0}
        t0 = time.monotonic()
        ServerFleet([plan], tmp_path).wait_idle(limit_s=30)
        assert time.monotonic() - t0 < 5  # its gauges say idle: no waiting out the limit
        _Page.body = b"sglang:generation_tokens_total 5.0\n"
        assert scrape_counters(plan) is None
    finally:
        httpd.shutdown()


def test_a_server_gets_the_stated_environment_not_the_drivers_whole_one(tmp_path, monkeypatch):
    """Named variables and families pass, the plan's win, the GPU choice is never inherited,
    and whatever else the driver holds stays with it."""
    monkeypatch.setenv("DRIVER_ONLY_SECRET", "s3cret")
    monkeypatch.setenv("HF_HOME", "/models/hf")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    port = free_port()
    plan = sse_plan("s", port)
    plan = LaunchPlan(plan.name, plan.base_url, plan.argv, {"VLLM_LOGGING_LEVEL": "INFO", "CUDA_VISIBLE_DEVICES": "0"},
                      ready_timeout_s=plan.ready_timeout_s)
    handle = ServerHandle(plan, tmp_path / "s.log")
    handle.start()
    try:
        handle.wait_ready(poll_s=0.1)
        raw = Path(f"/proc/{handle.pid}/environ").read_bytes().split(b"\0")
        seen = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    finally:
        handle.stop(grace_s=1.0)
    assert seen == server_environment(plan)
    assert "DRIVER_ONLY_SECRET" not in seen and seen["PATH"] and seen["HF_HOME"] == "/models/hf"
    assert seen["VLLM_LOGGING_LEVEL"] == "INFO" and seen["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in passed_on({"CUDA_VISIBLE_DEVICES": "3", "PATH": "/bin"})


LEADER_OUTLIVED_BY_A_THREAD = """
import ctypes, os, pathlib, sys, threading, time
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
threading.Thread(target=lambda: (time.sleep(1.5), os._exit(7))).start()
ctypes.CDLL(None).pthread_exit(None)
"""
"""A server whose main thread ends 1.5 s before its process: its leader shows as a zombie that
the kernel does not hand over yet, as a SIGKILLed server's does while its threads end."""


def test_a_leader_seen_gone_before_its_threads_end_is_told_as_its_exit(tmp_path):
    go = tmp_path / "go"
    fleet = ServerFleet([LaunchPlan("lingers", "http://127.0.0.1:1",
                                    [sys.executable, "-c", LEADER_OUTLIVED_BY_A_THREAD, str(go)])], tmp_path)
    (handle,) = fleet.handles
    handle.start()
    try:
        watch = ServerWatch(fleet)
        wait_until(lambda: handle.group() == [handle.pid], 10)
        watch(PhaseChanged("measure", 0.0))
        go.touch()
        wait_until(lambda: not process_alive(handle.pid), 10)
        assert handle.exit_code() is None  # a zombie leader, not yet reaped: the case under test
        assert watch.death().startswith("server lingers exited with code 7 during the run")
    finally:
        fleet.stop()
