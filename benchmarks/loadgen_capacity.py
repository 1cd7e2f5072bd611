"""How much does gpushare's load generator itself cost, next to `vllm bench serve`?

A benchmark client measures the server only while the client is not the bottleneck. This
script puts both clients in front of a server that costs (almost) nothing: nginx on
127.0.0.1, pinned to CPU 0, answering every POST /v1/completions with the same canned
stream of 128 SSE token events in vLLM's format (plus the usage event and [DONE]). Each
client runs in its own process pinned to CPU 1, closed loop at the same concurrency for
the same number of requests, and we report what it achieved and what it spent:

  * requests/s and output tokens/s: the client's ceiling on one core;
  * CPU ms per request: process CPU time of the driving process over the measured window,
    divided by the requests sent in it;
  * TTFT p50/p99: pure client-side latency here, as the server answers at once.

Then our client runs open loop (Poisson) at half the capacity it just measured, where the
TTFT it reports should stay near the network floor (target: p99 < 2 ms).

Run:  .venv/bin/python benchmarks/loadgen_capacity.py [--requests N] [--concurrency 64] [--port P]

Workers are this same file run again with --worker (ours / vllm) under `taskset -c 1`;
each writes its numbers as JSON to the path given with --result.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from gpushare.config import EMBEDDED_MODEL
from gpushare.serving.models import embedded_folder, is_prepared

MODEL = "bench"
OUTPUT_TOKENS = 128
PROMPT_TOKENS = 32
WARMUP = 64
SERVER_CPU, CLIENT_CPU = "0", "1"
TTFT_P99_TARGET_MS = 2.0

# --- the canned server ----------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    sendfile on;
    tcp_nodelay on;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        # The static module answers POST with 405; turn that into the file itself.
        location = /v1/completions {{ types {{ }} default_type text/event-stream; error_page 405 =200 $uri; }}
        location = /v1/models {{ types {{ }} default_type application/json; }}
    }}
}}
"""


def sse_event(obj: dict) -> str:
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


def completion_stream() -> str:
    """128 token events, the last one finishing with "length", then usage and [DONE]."""
    head = {"id": "cmpl-x", "object": "text_completion", "created": 1, "model": MODEL}

    def token(finish: str | None) -> str:
        choice = {"index": 0, "text": " tok", "logprobs": None, "finish_reason": finish, "stop_reason": None}
        return sse_event({**head, "choices": [choice]})

    usage = {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS + OUTPUT_TOKENS,
             "completion_tokens": OUTPUT_TOKENS}
    tokens = [token(None)] * (OUTPUT_TOKENS - 1) + [token("length")]
    return "".join(tokens) + sse_event({**head, "choices": [], "usage": usage}) + "data: [DONE]\n\n"


def models_list() -> str:
    return json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "root": MODEL}]})


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def start_nginx(nginx: str, tmp: Path, port: int) -> subprocess.Popen:
    tmp.chmod(0o755)  # nginx's worker drops root for 'nobody', which must read www/
    (tmp / "www" / "v1").mkdir(parents=True)
    (tmp / "www" / "v1" / "completions").write_text(completion_stream())
    (tmp / "www" / "v1" / "models").write_text(models_list())
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=port))
    cmd = ["taskset", "-c", SERVER_CPU, nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"]
    with open(tmp / "stderr.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        check_server(port, proc, tmp)
    except BaseException:
        stop(proc)
        raise
    return proc


def check_server(port: int, proc: subprocess.Popen, tmp: Path) -> None:
    """Wait for nginx, then check both routes answer what the clients expect."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            sys.exit(f"nginx exited at start:\n{(tmp / 'stderr.log').read_text()}{(tmp / 'error.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"nginx is not listening on 127.0.0.1:{port} after 30 s")
            time.sleep(0.05)
    post = urllib.request.Request(base + "/v1/completions", data=b'{"prompt": "hi"}', method="POST",
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=5) as resp:
        body = resp.read().decode()
        assert resp.headers["Content-Type"] == "text/event-stream", resp.headers["Content-Type"]
    assert body == completion_stream(), "nginx served a different body"
    with urllib.request.urlopen(base + "/v1/models", timeout=5) as resp:
        assert json.load(resp)["data"][0]["id"] == MODEL


def stop(proc: subprocess.Popen) -> None:
    """Stop a process we started, by its PID: SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port(port: int = 0) -> int:
    """`port` if nothing listens on it (any free port for 0); exits otherwise."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does: TIME_WAIT is fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            sys.exit(f"127.0.0.1:{port} is not free: {err.strerror}")
        return sock.getsockname()[1]


# --- the workers (run pinned, in their own process) ------------------------------------------


def worker_ours(port: int, n: int, concurrency: int, rate: float | None) -> dict:
    """gpushare's LoadGenerator: closed loop at `concurrency`, or open loop (Poisson) at `rate`."""
    import numpy as np
    import uvloop

    from gpushare.config import ApiConfig, LoadConfig
    from gpushare.load.loadgen import LoadGenerator
    from gpushare.load.sending import Endpoint
    from gpushare.measure.metrics import queue_time, summarize
    from gpushare.core.records import RequestSpec
    from gpushare.load.workload import inter_arrival_gaps

    specs = [RequestSpec(index=i, prompt="hello world", max_tokens=OUTPUT_TOKENS) for i in range(n + WARMUP)]
    endpoint = Endpoint("nginx", f"http://127.0.0.1:{port}", MODEL)
    if rate is None:
        load, arrivals = LoadConfig(concurrency=concurrency, n_requests=n, warmup_requests=WARMUP), None
    else:
        load = LoadConfig(request_rate=rate, n_requests=n, warmup_requests=WARMUP)
        arrivals = inter_arrival_gaps(np.random.default_rng(0), rate, 1.0)
    result = uvloop.run(LoadGenerator([endpoint], ApiConfig(), load, specs, arrivals=arrivals).run())
    s = summarize(result.records).flat()
    measured = [r for r in result.records if not r.warmup]
    return {
        "completed": s["completed"], "failed": s["failed"],
        "request_throughput": s["request_throughput"], "output_throughput": s["output_throughput"],
        "cpu_ms_per_request": 1000.0 * result.client_cpu_s / n,
        "p50_ttft_ms": s["p50_ttft_ms"], "p99_ttft_ms": s["p99_ttft_ms"],
        "mean_queue_ms": s["mean_queue_ms"], "p99_queue_ms": s["p99_queue_ms"],
        "sent_early": sum(queue_time(r) < 0 for r in measured) / len(measured),
        "errors": sorted({r.error for r in measured if not r.ok})[:3],
    }


def worker_vllm(port: int, n: int, concurrency: int) -> dict:
    """`vllm bench serve`, called as its CLI does (the `vllm` script itself fails to start here)."""
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}", "--endpoint", "/v1/completions",
        "--model", MODEL, "--tokenizer", str(embedded_folder(EMBEDDED_MODEL)),
        "--dataset-name", "random", "--random-input-len", str(PROMPT_TOKENS),
        "--random-output-len", str(OUTPUT_TOKENS), "--num-prompts", str(n), "--max-concurrency", str(concurrency),
        "--num-warmups", str(WARMUP), "--ignore-eos", "--temperature", "0", "--disable-tqdm",
        "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
    ])
    # Process CPU time spent inside benchmark() (its test request, warm-up and measured run),
    # less the metric computation at its end: the part comparable to our measured window.
    cpu = {"benchmark": 0.0, "metrics": 0.0}
    serve.benchmark = cpu_timed(serve.benchmark, cpu, "benchmark")
    serve.calculate_metrics = cpu_timed(serve.calculate_metrics, cpu, "metrics")
    r = serve.main(args)
    sent = n + 1 + WARMUP
    return {
        "completed": r["completed"], "failed": r["failed"],
        "request_throughput": r["request_throughput"], "output_throughput": r["output_throughput"],
        "cpu_ms_per_request": 1000.0 * (cpu["benchmark"] - cpu["metrics"]) / sent,
        "p50_ttft_ms": r["p50_ttft_ms"], "p99_ttft_ms": r["p99_ttft_ms"],
    }


def cpu_timed(fn, totals: dict, key: str):
    """Wrap a function (sync or async) to add the process CPU time it takes to totals[key]."""
    if inspect.iscoroutinefunction(fn):
        async def timed_async(*args, **kwargs):
            t0 = time.process_time()
            try:
                return await fn(*args, **kwargs)
            finally:
                totals[key] += time.process_time() - t0
        return timed_async

    def timed(*args, **kwargs):
        t0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] += time.process_time() - t0
    return timed


# --- the driver ---------------------------------------------------------------------------------


def run_worker(kind: str, port: int, n: int, concurrency: int, tmp: Path, rate: float | None = None) -> dict:
    """Run one worker pinned to the client CPU; add its whole-process CPU (import included)."""
    out = tmp / f"{kind}-{rate or 'closed'}.json"
    cmd = ["taskset", "-c", CLIENT_CPU, sys.executable, __file__, "--worker", kind, "--port", str(port),
           "--requests", str(n), "--concurrency", str(concurrency), "--result", str(out)]
    if rate is not None:
        cmd += ["--rate", repr(rate)]
    log = tmp / f"{kind}.log"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as sink:
        rc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        sys.exit(f"{kind} client failed (rc={rc}); last lines of its log:\n" + "\n".join(log.read_text().splitlines()[-25:]))
    result = json.loads(out.read_text())
    if result["failed"] or result["completed"] != n:
        sys.exit(f"{kind} client: {result['completed']} of {n} requests completed, {result['failed']} failed "
                 f"{result.get('errors', '')}; against a static server that makes the run meaningless")
    result["process_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def describe(name: str, r: dict) -> None:
    print(f"  {name}: {r['completed']} ok | {r['request_throughput']:.0f} req/s, "
          f"{r['output_throughput']:.0f} output tok/s | {r['cpu_ms_per_request']:.3f} CPU ms/request "
          f"(whole process incl. start-up: {r['process_cpu_s']:.1f} s) | "
          f"TTFT p50 {r['p50_ttft_ms']:.3f} ms, p99 {r['p99_ttft_ms']:.3f} ms")


def machine_line() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    u = platform.uname()
    return f"{u.system} {u.node} {u.release} {u.machine} | {model} | {os.cpu_count()} cores | Python {platform.python_version()}"


def print_table(ours: dict, vllm: dict) -> None:
    print()
    print(f"{'client':<22}{'req/s':>9}{'out tok/s':>12}{'CPU ms/req':>12}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}")
    for name, r in (("gpushare LoadGenerator", ours), ("vllm bench serve", vllm)):
        print(f"{name:<22}{r['request_throughput']:>9.0f}{r['output_throughput']:>12.0f}"
              f"{r['cpu_ms_per_request']:>12.3f}{r['p50_ttft_ms']:>13.3f}{r['p99_ttft_ms']:>13.3f}")
    print(f"ours / vLLM req/s: {ours['request_throughput'] / vllm['request_throughput']:.2f}x")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine_line()}")


def benchmark(args: argparse.Namespace, tmp: Path) -> None:
    n, c = args.requests, args.concurrency
    print(f"server: nginx on 127.0.0.1:{args.port} (CPU {SERVER_CPU}); clients on CPU {CLIENT_CPU}; "
          f"{n} requests x {OUTPUT_TOKENS} tokens, warm-up {WARMUP}")
    print(f"[1/3] gpushare LoadGenerator, closed loop, concurrency {c}")
    ours = run_worker("ours", args.port, n, c, tmp)
    describe("ours", ours)
    print(f"[2/3] vllm bench serve (vllm.benchmarks.serve.main), --max-concurrency {c}")
    vllm = run_worker("vllm", args.port, n, c, tmp)
    describe("vLLM", vllm)
    rate = round(0.5 * ours["request_throughput"], 1)
    print(f"[3/3] gpushare LoadGenerator, open loop (Poisson) at {rate} req/s = half its capacity")
    open_loop = run_worker("ours", args.port, n, c, tmp, rate=rate)
    met = "met" if open_loop["p99_ttft_ms"] < TTFT_P99_TARGET_MS else "MISSED"
    print(f"  open loop: {open_loop['request_throughput']:.0f} req/s achieved | TTFT p50 {open_loop['p50_ttft_ms']:.3f} ms, "
          f"p99 {open_loop['p99_ttft_ms']:.3f} ms (target p99 < {TTFT_P99_TARGET_MS:g} ms: {met}) | "
          f"client queue mean {open_loop['mean_queue_ms']:.3f} ms, p99 {open_loop['p99_queue_ms']:.3f} ms "
          f"({open_loop['sent_early']:.0%} sent before their scheduled time)")
    print_table(ours, vllm)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="measured requests per run (default 20000)")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop concurrency (default 64)")
    parser.add_argument("--port", type=int, default=None, help="nginx port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--worker", choices=["ours", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker == "ours":
        args.result.write_text(json.dumps(worker_ours(args.port, args.requests, args.concurrency, args.rate)))
        return
    if args.worker == "vllm":
        args.result.write_text(json.dumps(worker_vllm(args.port, args.requests, args.concurrency)))
        return
    nginx = nginx_binary()
    if nginx is None:
        print("nginx is not installed; install it with:  apt-get install -y nginx", file=sys.stderr)
        sys.exit(2)
    if not is_prepared(EMBEDDED_MODEL):
        print(f"vLLM's client needs the '{EMBEDDED_MODEL}' tokenizer: run `make setup` first", file=sys.stderr)
        sys.exit(2)
    args.port = free_port(args.port or 0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # so `finally` stops nginx
    try:
        with tempfile.TemporaryDirectory(prefix="loadgen-capacity-") as tmp:
            server = start_nginx(nginx, Path(tmp), args.port)
            try:
                benchmark(args, Path(tmp))
            finally:
                stop(server)
    except KeyboardInterrupt:
        sys.exit("interrupted; nginx and the client stopped")


if __name__ == "__main__":
    main()
