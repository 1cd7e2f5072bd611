"""The matrix: servers start once per scenario and serve every cell; reruns resume; a failed
scenario is recorded and the matrix goes on. Process handling uses the local SSE test server;
test_e2e.py runs a matrix on real vLLM."""

import json
import sys

import pandas as pd
import pytest
import yaml

from helpers import SSE_SERVER, alive, cli, error_line, free_port, summary, write_config


def scenario(tmp_path, name, servers, mode="baseline"):
    return write_config(
        tmp_path / f"{name}.yaml", scenario=name, sharing={"mode": mode}, servers=servers,
        workload={"kind": "synthetic", "input_tokens": 8, "output_tokens": 4},
        load={"concurrency": 1, "n_requests": 4, "warmup_requests": 1},
    )


def fake(name, port):
    return {"name": name, "command": SSE_SERVER, "port": port, "ready_timeout_s": 30}


def test_matrix_reuses_servers_resumes_and_survives_a_failed_scenario(tmp_path):
    a = scenario(tmp_path, "solo", [fake("s", free_port())])
    b = scenario(tmp_path, "pair", [fake("p0", free_port()), fake("p1", free_port())], mode="timeslice")
    broken = scenario(tmp_path, "broken", [{"name": "x", "port": free_port(), "ready_timeout_s": 5,
                                            "command": [sys.executable, "-c", "raise SystemExit(4)"]}])
    out = tmp_path / "matrix"
    args = ["matrix", "--configs", str(a), str(broken), str(b), "--concurrency", "1", "2", "--n-requests", "6",
            "--out", str(out)]
    proc = cli(*args)
    assert proc.returncode == 1, proc.stderr  # the broken scenario failed; the others ran
    index = json.loads((out / "matrix.json").read_text())
    assert index["counts"] == {"complete": 4, "skipped": 0, "failed": 2, "not_run": 0}
    assert 0 < index["measured_fraction"] < 1
    first = index["invocations"][0]
    assert len(index["invocations"]) == 1 and first["cells_run"] == 4 and first["server_start_s"] > 0
    assert first["measured_s"] == index["measured_s"] < first["wall_s"] == index["wall_s"]
    failed = [c for c in index["cells"] if c["status"] == "failed"]
    assert {c["scenario"] for c in failed} == {"broken"} and "exited with code 4" in failed[0]["error"]

    # One start per scenario: every cell of a scenario saw the same server processes.
    for name, servers in (("solo", 1), ("pair", 2)):
        cells = [summary(out / name / cell) for cell in ("c1_rep1", "c2_rep1")]
        assert all(doc["complete"] and doc["completed"] == 6 for doc in cells)
        assert [s["pid"] for s in cells[0]["servers"]] == [s["pid"] for s in cells[1]["servers"]]
        assert len(cells[0]["servers"]) == servers and cells[1]["max_concurrency"] == 2
        assert len(list((out / name).glob("server-*.log"))) == servers
        assert not any(alive(s["pid"]) for s in cells[0]["servers"])

    # Resume: complete cells are skipped (no server started), an incomplete one is redone.
    before = {(c["scenario"], c["cell"]): c["measured_s"] for c in index["cells"]}
    (out / "pair" / "c2_rep1" / "summary.json").unlink()
    log = (out / "solo" / "server-0.log").read_text()
    proc = cli(*args)
    index = json.loads((out / "matrix.json").read_text())
    assert index["counts"] == {"complete": 1, "skipped": 3, "failed": 2, "not_run": 0}
    assert [c["cell"] for c in index["cells"] if c["status"] == "complete"] == ["c2_rep1"]
    # The resumed matrix counts both invocations: skipped cells keep the time they were measured in.
    runs = index["invocations"]
    assert len(runs) == 2 and runs[0] == first and runs[1]["cells_run"] == 1
    assert index["wall_s"] == pytest.approx(runs[0]["wall_s"] + runs[1]["wall_s"])
    redone = next(c for c in index["cells"] if c["status"] == "complete")
    assert index["measured_s"] == pytest.approx(first["measured_s"] - before["pair", "c2_rep1"] + redone["measured_s"])
    assert (out / "solo" / "server-0.log").read_text() == log
    assert summary(out / "pair" / "c2_rep1")["complete"]

    # A later invocation with fewer configs keeps the other scenarios' cells in the index.
    proc = cli("matrix", "--configs", str(a), "--concurrency", "1", "--n-requests", "6", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    later = json.loads((out / "matrix.json").read_text())
    assert later["counts"] == {"complete": 0, "skipped": 4, "failed": 2, "not_run": 0}
    assert later["planned_cells"] == 6 and len(later["invocations"]) == 3
    assert later["measured_s"] == pytest.approx(index["measured_s"])


def test_matrix_flags_are_checked(tmp_path):
    cfg = scenario(tmp_path, "x", [fake("s", free_port())])
    proc = cli("matrix", "--configs", str(cfg), "--repeats", "0", "--concurrency", "1")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --repeats: must be a finite number greater than 0"
    for flag in ("--duration", "--request-rate"):
        proc = cli("matrix", "--configs", str(cfg), flag, "inf", "--concurrency", "1")
        assert proc.returncode == 2 and proc.stderr.strip() == f"error: {flag}: must be a finite number greater than 0"
    (tmp_path / "a-file").write_text("")
    proc = cli("matrix", "--configs", str(cfg), "--concurrency", "1", "--out", str(tmp_path / "a-file"))
    assert proc.returncode == 2 and proc.stderr.strip().startswith(f"error: --out: cannot write to {tmp_path / 'a-file'}")
    proc = cli("matrix", "--configs", str(cfg), str(cfg), "--concurrency", "1")
    assert proc.returncode == 2 and "two configs share a scenario name" in proc.stderr


def test_cells_grow_with_concurrency(tmp_path):
    from gpushare.config import parse_config
    from gpushare.experiment.matrix_plan import Cell, cell_config

    base = parse_config({"load": {"concurrency": 8, "n_requests": 200}, "seed": 3})
    c24 = cell_config(base, Cell("s", "concurrency", 24, 2), 200, tmp_path, per_concurrency=25)
    assert c24.load.concurrency == 24 and c24.load.n_requests == 600
    c4 = cell_config(base, Cell("s", "concurrency", 4, 1), 200, tmp_path, per_concurrency=25)
    assert c4.load.n_requests == 200
    rate = cell_config(base, Cell("s", "request_rate", 2.5, 1), None, tmp_path)
    assert rate.load.open_loop and rate.load.concurrency is None and rate.load.n_requests == 200


def test_sigterm_stops_the_matrix_and_its_servers(tmp_path):
    import signal
    import subprocess
    import time

    cfg = scenario(tmp_path, "long", [fake("s", free_port())])
    out = tmp_path / "matrix"
    proc = subprocess.Popen([sys.executable, "-m", "gpushare.cli", "matrix", "--configs", str(cfg),
                             "--concurrency", "1", "2", "3", "--n-requests", "40", "--out", str(out)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "long" / "c2_rep1").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    index = json.loads((out / "matrix.json").read_text())
    counts = index["counts"]
    assert counts["complete"] >= 1 and counts["not_run"] + counts["failed"] >= 1 and sum(counts.values()) == 3
    pid = summary(out / "long" / "c1_rep1")["servers"][0]["pid"]
    assert not alive(pid)


def test_cells_bounded_by_time(tmp_path):
    from gpushare.config import parse_config
    from gpushare.experiment.matrix_plan import Cell, cell_config

    base = parse_config({"load": {"concurrency": 8, "n_requests": 200}})
    timed = cell_config(base, Cell("s", "concurrency", 16, 1), None, tmp_path, duration_s=150)
    assert timed.load.duration_s == 150 and timed.load.n_requests is None and timed.load.concurrency == 16
    cfg = scenario(tmp_path, "t", [fake("s", free_port())])
    proc = cli("matrix", "--configs", str(cfg), "--concurrency", "1", "--duration", "5", "--n-requests", "3")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --duration: give either --duration or")


def test_every_cell_has_its_own_prompts(tmp_path):
    """Cells share a server, so no cell may repeat another's prompts (its prefix cache would
    answer them); the same cell always gets the same seed."""
    from gpushare.config import parse_config
    from gpushare.experiment.matrix_plan import cell_config, cells_for

    base = parse_config({"load": {"concurrency": 8, "n_requests": 200}, "seed": 3})
    cells = cells_for("s", [8, 16, 24], [0.5, 8.0], repeats=3)
    seeds = [cell_config(base, cell, None, tmp_path).seed for cell in cells]
    assert len(set(seeds)) == len(cells) == 15
    assert seeds == [cell_config(base, cell, None, tmp_path).seed for cell in cells]
    other = parse_config({"load": {"concurrency": 8, "n_requests": 200}, "seed": 4})
    assert not set(seeds) & {cell_config(other, cell, None, tmp_path).seed for cell in cells}



def test_a_cells_hash_ignores_where_it_ran_and_nothing_it_measures(tmp_path):
    """The hash resume compares is the same for a cell an executor moved to another GPU, whose
    servers got ports, or written under another --out (as a Ray actor or a --gpus worker runs it);
    it differs for a change of what the cell measures."""
    from gpushare.experiment.matrix_plan import config_hash, load_scenarios, on_gpu, plan_matrix

    cfg = scenario(tmp_path, "s", [fake("s", free_port())])
    (plan,) = plan_matrix(load_scenarios([cfg], None), [1, 2], [], 1, tmp_path / "m", 4, None, None)
    for gpu in (0, 1, 3):
        moved = on_gpu(plan, gpu)
        for cell, there in zip(plan.cells, moved.cells):
            ported = there.config.model_copy(update={
                "out": tmp_path / "elsewhere",
                "servers": [s.model_copy(update={"port": free_port()}) for s in there.config.servers]})
            assert config_hash(ported) == cell.config_hash
    assert plan.cells[0].config_hash != plan.cells[1].config_hash  # concurrency 1 against 2
    other = plan.cells[0].config.model_copy(update={"seed": plan.cells[0].config.seed + 1})
    assert config_hash(other) != plan.cells[0].config_hash


def test_a_cell_measured_under_other_settings_is_refused_unless_redone(tmp_path):
    """A rerun reuses a complete cell only when it was measured under the settings planned now;
    otherwise it refuses, changing nothing, or with --redo-changed measures it again and keeps
    the earlier run beside it, which analysis does not count."""
    cfg = scenario(tmp_path, "s", [fake("s", free_port())])
    out = tmp_path / "matrix"
    args = ["matrix", "--configs", str(cfg), "--concurrency", "1", "--out", str(out)]
    assert cli(*args, "--n-requests", "4").returncode == 0
    index = (out / "matrix.json").read_text()
    assert json.loads(index)["cells"][0]["config_hash"]

    doc = yaml.safe_load(cfg.read_text())
    doc["workload"]["output_tokens"] = 3
    other_file = write_config(tmp_path / "s-other.yaml", **doc)
    for changed in (["--n-requests", "9"], ["--duration", "1"], ["--n-requests", "4", "--model", "other"]):
        proc = cli(*args, *changed)
        assert proc.returncode == 2, proc.stderr
        assert error_line(proc.stderr) == (
            f"error: --out {out}: 1 complete cell(s) were measured under other settings than planned now: s/c1_rep1; "
            "give --redo-changed to measure them again (the earlier runs are kept beside them as CELL.attempt-N), "
            "or a fresh --out")
    proc = cli("matrix", "--configs", str(other_file), "--concurrency", "1", "--n-requests", "4", "--out", str(out))
    assert proc.returncode == 2 and "s/c1_rep1" in proc.stderr
    assert (out / "matrix.json").read_text() == index and sorted(p.name for p in (out / "s").iterdir() if p.is_dir()) == [
        "c1_rep1"]

    proc = cli(*args, "--n-requests", "9", "--redo-changed")
    assert proc.returncode == 0, proc.stderr
    attempt = out / "s" / "c1_rep1.attempt-1"
    assert f"s c1_rep1: the earlier attempt (measured under other settings than planned now) is kept in {attempt}" \
        in proc.stderr.replace("\n", "")
    assert summary(attempt)["completed"] == 4 and summary(out / "s" / "c1_rep1")["completed"] == 9
    redone = json.loads((out / "matrix.json").read_text())
    assert [(a["cell"], a["run_dir"]) for a in redone["superseded"]] == [("c1_rep1", str(attempt))]
    assert redone["counts"]["complete"] == 1
    assert cli(*args, "--n-requests", "9").returncode == 0  # the same settings again: skipped

    proc = cli("analyze", "--runs", str(out), "--out", str(tmp_path / "plots"))
    assert proc.returncode == 0, proc.stderr
    runs = pd.read_csv(tmp_path / "plots" / "runs.csv")
    assert runs["run"].tolist() == [str(out / "s" / "c1_rep1")]
    assert f"note: left out {attempt}: superseded: an earlier attempt at cell c1_rep1" in proc.stderr


def test_an_index_without_hashes_resumes_by_the_cells_config(tmp_path):
    """An index written before cells recorded their settings (committed results): a cell's own
    config.yaml tells; a cell whose config.yaml does not read is refused, not reused."""
    cfg = scenario(tmp_path, "s", [fake("s", free_port())])
    out = tmp_path / "matrix"
    args = ["matrix", "--configs", str(cfg), "--concurrency", "1", "2", "--n-requests", "4", "--out", str(out)]
    assert cli(*args).returncode == 0
    index = json.loads((out / "matrix.json").read_text())
    for cell in index["cells"]:
        del cell["config_hash"]
    (out / "matrix.json").write_text(json.dumps(index))
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "matrix.json").read_text())["counts"]["skipped"] == 2
    assert cli(*[arg if arg != "4" else "5" for arg in args]).returncode == 2  # --n-requests 5

    (out / "matrix.json").write_text(json.dumps(index))
    (out / "s" / "c2_rep1" / "config.yaml").write_text("load: {concurrency: -1}\n")
    proc = cli(*args)
    assert proc.returncode == 2
    assert "1 complete cell(s) were measured under other settings than planned now: s/c2_rep1 (settings not " \
        "recorded)" in error_line(proc.stderr)
