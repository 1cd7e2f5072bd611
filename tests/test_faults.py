"""Signals at every phase of a run and of a matrix, once and twice, and SIGHUP: the exit code,
what summary.json says, and that no process of the run remains.

The servers are the local SSE test server started as a server command (these tests are
about process handling); test_e2e.py kills real vLLM processes mid-run.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from gpushare.measure.results import read_verdict
from gpushare.core.processes import group_members
from gpushare.serving.servers import STARTING_GRACE_S
from helpers import SSE_SERVER, alive, free_port, server_pids, wait_until, write_config

pytestmark = pytest.mark.timeout(300)


def config(tmp_path: Path, *server_flags: str, n_requests: int = 40, warmup: int = 1, name: str = "f") -> Path:
    server = {"name": "fake", "command": [*SSE_SERVER, *server_flags], "port": free_port(), "ready_timeout_s": 60,
              "stop_grace_s": 2}  # a SIGTERM-ignoring worker is killed after 2 s, not 20
    return write_config(
        tmp_path / f"{name}.yaml", scenario=name, servers=[server],
        workload={"kind": "synthetic", "input_tokens": 8, "output_tokens": 4},
        load={"concurrency": 1, "n_requests": n_requests, "warmup_requests": warmup},
        out=str(tmp_path / "runs"),
    )


class Gpushare:
    """The real command line as a child process, its stderr read line by line as it comes."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", *args], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None or not self._queue.empty(), f"exited before {text!r}: {''.join(self.lines)}"
            try:
                self.lines.append(self._queue.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"no line with {text!r} within {timeout} s: {''.join(self.lines)}")

    def signal(self, sig: int) -> float:
        self.proc.send_signal(sig)
        return time.monotonic()

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        time.sleep(0.2)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return code, "".join(self.lines)


def catches_sighup(pid: int) -> bool:
    """Python leaves SIGHUP alone; gpushare catches it once its command has begun."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGHUP - 1)))


def only_run_folder(tmp_path: Path) -> Path:
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return folder


def started(tmp_path: Path, cfg: Path) -> tuple[Gpushare, Path]:
    """`gpushare run`, once it has made its run folder."""
    run = Gpushare("run", "--config", str(cfg))
    run.wait_for("Run folder:")
    return run, only_run_folder(tmp_path)


def requests_rows(folder: Path, warmup: int) -> int:
    path = folder / "requests.csv"
    if not path.exists():
        return 0
    try:
        return int((pd.read_csv(path)["warmup"] == warmup).sum())
    except (pd.errors.EmptyDataError, KeyError):
        return 0


def pids_of_run(folder: Path) -> list[int]:
    return server_pids(folder / "server-0.log") if (folder / "server-0.log").exists() else []


def assert_nothing_left(pids: list[int]) -> None:
    assert pids, "the server never printed its pid"
    wait_until(lambda: not any(alive(p) for p in pids), timeout=5)
    assert group_members(pids[-1]) == []


def assert_interrupted(code: int, stderr: str, folder: Path, sig: str) -> dict:
    assert code == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == f"error: interrupted by {sig}"
    doc = json.loads((folder / "summary.json").read_text())
    assert doc["complete"] is False and doc["error"] == f"interrupted by {sig}"
    return doc


def test_signal_before_the_run_folder_exists(tmp_path):
    """The tokenizer loads before the folder exists; a signal then leaves no folder at all."""
    cfg = config(tmp_path)
    run = Gpushare("run", "--config", str(cfg))
    wait_until(lambda: catches_sighup(run.proc.pid))  # its handlers are in place: the command has begun
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    run.signal(signal.SIGINT)
    code, stderr = run.finish()
    assert code == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("twice", [False, True])
def test_signal_during_server_start_up(tmp_path, twice):
    """A server still loading (it ignores SIGTERM, like an engine in its start-up) is stopped
    by SIGKILL after the short start-up grace, or at once on a second signal; the user is told."""
    cfg = config(tmp_path, "--startup-delay", "60", "--ignore-sigterm")
    run, folder = started(tmp_path, cfg)
    wait_until(lambda: pids_of_run(folder))
    pids = pids_of_run(folder)
    first = run.signal(signal.SIGINT)
    run.wait_for("stopping servers")
    if twice:
        time.sleep(0.3)
        run.signal(signal.SIGINT)
    wait_until(lambda: not any(alive(pid) for pid in pids), 90)
    gone = time.monotonic() - first
    code, stderr = run.finish()
    # timed to the server's end, not the command's (a loaded machine takes seconds to write the
    # summary and exit): hurried, SIGKILL at once, well inside the start-up grace; else after
    # the grace, never the 60 s wait after SIGKILL
    assert (gone < STARTING_GRACE_S - 1) if twice else (STARTING_GRACE_S <= gone < 15), gone
    assert_interrupted(code, stderr, folder, "SIGINT")
    assert_nothing_left(pids)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_warm_up(tmp_path, sig):
    cfg = config(tmp_path, "--token-delay", "0.2", warmup=30)
    run, folder = started(tmp_path, cfg)
    wait_until(lambda: requests_rows(folder, warmup=1) >= 1)
    pids = pids_of_run(folder)
    run.signal(sig)
    code, stderr = run.finish()
    doc = assert_interrupted(code, stderr, folder, sig.name)
    assert doc["num_prompts"] == 0 and doc["warmup_requests"] >= 1
    assert_nothing_left(pids)


@pytest.mark.parametrize("sig, twice", [(signal.SIGINT, False), (signal.SIGTERM, True), (signal.SIGHUP, False)])
def test_signal_during_measurement_keeps_every_finished_request(tmp_path, sig, twice):
    cfg = config(tmp_path, "--token-delay", "0.2", "--child-ignoring-sigterm", n_requests=500)
    run, folder = started(tmp_path, cfg)
    wait_until(lambda: requests_rows(folder, warmup=0) >= 2)
    pids = pids_of_run(folder)
    assert len(pids) == 2  # the server and a worker that ignores SIGTERM
    run.signal(sig)
    if twice:
        time.sleep(0.3)
        run.signal(sig)
    code, stderr = run.finish()
    doc = assert_interrupted(code, stderr, folder, sig.name)
    requests = pd.read_csv(folder / "requests.csv")
    measured = requests[requests["warmup"] == 0]
    assert doc["completed"] >= 2 and doc["completed"] + doc["failed"] == doc["num_prompts"] == len(measured)
    assert_nothing_left(pids)


@pytest.mark.parametrize("twice", [False, True])
def test_signal_while_servers_stop(tmp_path, twice):
    """The load is done and the servers are stopping (a worker ignores SIGTERM): a signal now
    is never raised out of the clean-up; it only makes the escalation to SIGKILL come at once.
    The measurement itself was complete, and says so."""
    cfg = config(tmp_path, "--child-ignoring-sigterm", n_requests=4)
    run = Gpushare("run", "--config", str(cfg))
    run.wait_for("stopping servers")
    folder = only_run_folder(tmp_path)
    pids = pids_of_run(folder)
    sent = run.signal(signal.SIGINT)
    if twice:
        time.sleep(0.3)
        run.signal(signal.SIGTERM)
    code, stderr = run.finish()
    assert time.monotonic() - sent < 15  # the 2 s grace and the exit, never the 60 s wait after SIGKILL
    assert "Traceback" not in stderr, stderr
    doc = json.loads((folder / "summary.json").read_text())
    assert doc["complete"] is True and doc["error"] is None and doc["completed"] == 4
    assert code == 0, stderr
    assert "came as the measurement ended" in stderr
    assert_nothing_left(pids)


def test_sigkill_loses_at_most_the_last_second_and_says_incomplete(tmp_path):
    cfg = config(tmp_path, "--token-delay", "0.05", n_requests=5000)
    run, folder = started(tmp_path, cfg)
    wait_until(lambda: requests_rows(folder, warmup=0) >= 5)
    pids = pids_of_run(folder)
    time.sleep(2.5)
    before_kill = requests_rows(folder, warmup=0)
    run.signal(signal.SIGKILL)
    run.finish()
    try:
        rows = pd.read_csv(folder / "requests.csv")
        # Each request takes ~0.2 s one at a time: the rows on disk trail the kill by about a second at most.
        assert len(rows[rows["warmup"] == 0]) >= before_kill >= 5
        doc = json.loads((folder / "summary.json").read_text())
        assert doc["complete"] is False and "did not finish" in doc["error"]
        assert read_verdict(folder).complete is False
    finally:
        for pid in pids:  # the server outlived the killed gpushare (`doctor --clean` covers this case)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_signal_between_matrix_cells_then_resume(tmp_path):
    cfg = config(tmp_path, "--child-ignoring-sigterm", n_requests=3, name="m")
    out = tmp_path / "matrix"
    args = ["matrix", "--configs", str(cfg), "--concurrency", "1", "2", "3", "--out", str(out)]
    run = Gpushare(*args)
    run.wait_for("[2/3]")  # the first cell is done, the second about to start
    run.signal(signal.SIGTERM)
    code, stderr = run.finish()
    assert code == 130 and "Traceback" not in stderr, stderr
    index = json.loads((out / "matrix.json").read_text())
    statuses = {c["cell"]: c["status"] for c in index["cells"]}
    assert statuses["c1_rep1"] == "complete" and sum(index["counts"].values()) == 3
    assert index["counts"]["complete"] < 3
    pids = server_pids(out / "m" / "server-0.log")
    assert_nothing_left(pids)
    # Resume: what was not complete is redone, the complete cell is skipped.
    run = Gpushare(*args)
    code, stderr = run.finish()
    assert code == 0, stderr
    index = json.loads((out / "matrix.json").read_text())
    assert index["counts"]["failed"] == 0 and index["counts"]["not_run"] == 0
    assert {c["cell"]: c["status"] for c in index["cells"]}["c1_rep1"] == "skipped"
