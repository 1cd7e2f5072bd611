"""The tests' own gpushare cache: the prepared model and vLLM's caches are shared with the
user's (read, and slow to rebuild), but the registry of started process groups is private,
so tests never list or clean the user's leftovers, nor leave entries among them."""

import os

import pytest

from gpushare.serving.models import cache_root
from helpers import MPS_STANDIN


@pytest.fixture(scope="session", autouse=True)
def private_process_registry(tmp_path_factory):
    shared = cache_root()
    private = tmp_path_factory.mktemp("gpushare-cache")
    for name in ("models", "vllm"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        (private / name).symlink_to(shared / name)
    before = os.environ.get("GPUSHARE_CACHE")
    os.environ["GPUSHARE_CACHE"] = str(private)
    yield private
    if before is None:
        del os.environ["GPUSHARE_CACHE"]
    else:
        os.environ["GPUSHARE_CACHE"] = before


def pytest_collection_modifyitems(items):
    """The end-to-end files first, the rest after in their own order: the real-vLLM tests are
    the longest files, so begun first they end beside the others rather than after them
    (make test keeps this order across its workers: --no-loadscope-reorder)."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


MACHINE_WIDE = {"ray_cluster", "standin"}
"""Fixtures whose tests watch machine-wide state: MPS control daemons (a run refuses a GPU that
any daemon on the machine may serve) and Ray's actors and node folders."""


@pytest.fixture(autouse=True)
def one_machine_wide_test_at_a_time(request, tmp_path_factory):
    """Under pytest-xdist (make test runs two workers), a test that watches machine-wide state
    holds a lock shared by the workers for its duration, so no two such tests overlap."""
    if not MACHINE_WIDE & set(request.fixturenames):
        yield
        return
    import fcntl

    with open(tmp_path_factory.getbasetemp().parent / "machine-wide.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def standin(monkeypatch, tmp_path):
    """The MPS control stand-in first on PATH; returns the log of the commands it was sent.
    Waits until no control daemon runs: a daemon the test before quit may still be exiting, and
    a run refuses a GPU another daemon serves."""
    from gpushare.serving.mps import running_control_daemons
    from helpers import wait_until

    try:
        wait_until(lambda: not running_control_daemons(), 30)
    except AssertionError:
        pytest.fail(f"an MPS control daemon outlived its test: pids {running_control_daemons()}")
    monkeypatch.setenv("PATH", f"{MPS_STANDIN}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "mps-standin.log"
    monkeypatch.setenv("MPS_STANDIN_LOG", str(log))
    return log


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster: one head node on 127.0.0.1 declaring two GPUs (fake on a
    machine without any: Ray only counts them). Its workers find the MPS control stand-in
    first on PATH (it logs to ray-mps-standin.log beside the head's log), so a scenario under
    MPS runs there too. Started with --block, so stopping the process we started ends the
    cluster (and a SIGKILL to its group, whatever outlived it); told to stop, its node does not
    drain first (Ray's default waits up to 30 s for work to leave it; a test cluster's has
    left). Yields its address."""
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from helpers import free_port

    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray is None:
        pytest.fail("Ray is not installed: pip install -e '.[cluster]'")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rgt-", dir="/tmp")  # short: Ray's socket paths must fit
    logs = tmp_path_factory.mktemp("ray")
    log = open(logs / "ray-start.log", "wb")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=4",
         "--num-gpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
             "PATH": f"{MPS_STANDIN}{os.pathsep}{os.environ['PATH']}",
             "MPS_STANDIN_LOG": str(logs / "ray-mps-standin.log")})
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while subprocess.run([ray, "status", f"--address={address}"], capture_output=True).returncode != 0:
        assert head.poll() is None and time.monotonic() < deadline, f"the Ray head did not start; see {log.name}"
        time.sleep(1)
    yield address
    head.terminate()  # `ray start --block` stops the node's processes, then exits
    try:
        head.wait(10)  # a head with nothing left to run needs no longer; the kill below ends the rest
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    try:
        os.killpg(head.pid, signal.SIGKILL)  # whatever of the group outlived its leader
    except ProcessLookupError:
        pass
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def _shared_vllm_cpu_server(private_process_registry, tmp_path_factory):
    """One real vLLM CPU server (CPU_SERVER, the embedded model) for a test file, started
    through gpushare's own launch path (the plan and command a run launches) and stopped, its
    whole process group, after the file's last test."""
    from gpushare.config import ServerConfig
    from gpushare.serving.engines.vllm import VllmEngine
    from gpushare.serving.models import resolve_model
    from gpushare.serving.servers import ServerHandle
    from helpers import CPU_SERVER, free_port

    model = resolve_model("smollm2", None, say=lambda _: None)
    cpus = sorted(os.sched_getaffinity(0))
    # vLLM's CPU worker binds its compute to the first CPU by default, as does every server
    # test_e2e.py launches while this one serves the other worker's tests: two engines on one
    # core stalled a first 300-token prefill for 44 s (1.3 s on a core of its own), and the
    # suite's real-vLLM tests by minutes. This one computes on the last CPU instead.
    env = {**CPU_SERVER["env"], **({"VLLM_CPU_OMP_THREADS_BIND": str(cpus[-1])} if len(cpus) > 1 else {})}
    config = ServerConfig(**{**CPU_SERVER, "env": env}, port=free_port())
    plan = VllmEngine.plan("shared-cpu", config, model.path, model.served_name, private_process_registry)
    handle = ServerHandle(plan, tmp_path_factory.mktemp("shared-vllm") / "server.log")
    try:
        handle.start()
        handle.wait_ready()
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def vllm_cpu_server(_shared_vllm_cpu_server):
    """The test file's shared vLLM CPU server, for end-to-end tests that only send it load (as
    an `external` server: gpushare neither starts nor stops it). Given to each test alive and
    holding no request, so no test's requests reach another's measured window."""
    from gpushare.serving.servers import requests_held
    from helpers import wait_until

    handle = _shared_vllm_cpu_server
    if handle.exit_code() is not None:
        pytest.fail(f"the shared vLLM server exited with code {handle.exit_code()}{handle.log_hint()}")
    wait_until(lambda: requests_held(handle.plan) == 0, 120, poll_s=0.2)
    return handle
