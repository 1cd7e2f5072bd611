"""The open-file limit against the load: before the load the soft limit is raised to what the
concurrency needs, or the run is refused in one line; a request the client cannot open a socket
for is the client's error, never the server's, and ends the load."""

import asyncio
import json
import os
import resource
import sys
from collections import Counter

from helpers import SSE_SERVER, cli, error_line, free_port, run_folder, summary, write_config
from sse_server import Behaviour, SseServer
from test_loadgen import serving

CONCURRENCY, N_REQUESTS = 256, 300


def config(tmp_path, concurrency=CONCURRENCY):
    server = {"name": "fake", "command": SSE_SERVER, "port": free_port(), "ready_timeout_s": 60}
    return write_config(
        tmp_path / "wide.yaml", scenario="wide", servers=[server],
        workload={"kind": "synthetic", "input_tokens": 8, "output_tokens": 4},
        load={"concurrency": concurrency, "n_requests": N_REQUESTS, "warmup_requests": 0},
        out=str(tmp_path / "runs"),
    )


def open_files(soft, hard=None):
    """A preexec_fn: the child starts with this open-file limit (the hard one kept unless given)."""
    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                                                    if hard is None else hard))
    return lower


def test_a_low_soft_limit_is_raised_for_the_concurrency(tmp_path):
    """`ulimit -n 64` at concurrency 256: the soft limit goes up to what the load needs, and
    every request completes."""
    proc = cli("run", "--config", str(config(tmp_path)), preexec_fn=open_files(64))
    assert proc.returncode == 0, proc.stderr
    doc = summary(run_folder(tmp_path / "runs"))
    assert doc["complete"] and doc["completed"] == N_REQUESTS and doc["failed"] == 0


def test_a_hard_limit_below_the_concurrency_is_refused_in_one_line(tmp_path):
    proc = cli("run", "--config", str(config(tmp_path)), preexec_fn=open_files(64, 64))
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert line.startswith(f"error: load.concurrency: {CONCURRENCY} requests in flight need about ")
    assert "RLIMIT_NOFILE: soft 64, hard 64" in line and "ulimit -Hn" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_matrix_checks_its_cells_before_its_servers_start(tmp_path):
    """The scenario's own concurrency is 1; its cell at 256 is what the limit is checked against."""
    out = tmp_path / "matrix"
    proc = cli("matrix", "--configs", str(config(tmp_path, concurrency=1)), "--concurrency", "1", str(CONCURRENCY),
               "--n-requests", str(N_REQUESTS), "--out", str(out), preexec_fn=open_files(64, 64))
    assert proc.returncode != 0
    assert f"scenario wide failed: load.concurrency: {CONCURRENCY} requests in flight need about " in proc.stderr
    assert "ready at" not in proc.stderr and not list(out.glob("wide/server-*.log"))  # no server started


CLIENT = """
import asyncio, json, os, resource, sys
from collections import Counter
from gpushare.config import ApiConfig, LoadConfig
from gpushare.load.loadgen import LoadGenerator
from gpushare.load.sending import Endpoint
from gpushare.core.records import RequestSpec

endpoint = Endpoint("s", sys.argv[1], "test")
load = LoadConfig(concurrency=32, n_requests=64, warmup_requests=0)
specs = [RequestSpec(index=i, prompt="p", max_tokens=2) for i in range(64)]
# Room for the event loop and a few sockets, not for 32.
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 10, hard))
result = asyncio.run(LoadGenerator([endpoint], ApiConfig(), load, specs).run())
print(json.dumps({"statuses": Counter(r.status for r in result.records),
                  "errors": sorted({r.error for r in result.records if r.status == "client_error"}),
                  "aborted": result.aborted}))
"""


def test_out_of_open_files_is_a_client_error_that_ends_the_load():
    async def go():
        async with serving(SseServer(Behaviour(first_token_delay=0.3))) as endpoints:
            child = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, endpoints[0].base_url,
                                                         stdout=asyncio.subprocess.PIPE, env=os.environ)
            out, _ = await child.communicate()
            assert child.returncode == 0
            return json.loads(out)
    result = asyncio.run(go())
    statuses = Counter(result["statuses"])
    assert statuses["client_error"] >= 1 and "connection_error" not in statuses
    assert all("Too many open files" in error for error in result["errors"])
    assert result["aborted"].startswith("the client ran out of open files (")
    assert sum(statuses.values()) < 64  # nothing was sent after the first one
