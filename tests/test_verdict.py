"""One verdict per run: `complete`, `error` and the exit code agree, whatever ended the run;
the matrix resumes from that verdict alone."""

import json
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpushare import cli
from gpushare.interrupts import Interrupted, Interrupts
from gpushare.core.records import RequestRecord
from gpushare.measure.results import read_verdict, verdict_of, write_unfinished
from gpushare.config import ApiConfig, LoadConfig, Tenant
from gpushare.experiment.run.verdict import run_verdict, tenants_verdict
from gpushare.load.workloads.synthetic import SyntheticWorkload
from helpers import FAULT_SERVER, cli as run_cli, free_port, run_folder, summary, write_config

pytestmark = pytest.mark.timeout(300)


def records(statuses: list[str], warmup: int = 0) -> list[RequestRecord]:
    out = [RequestRecord(index=i, endpoint="s", warmup=True) for i in range(warmup)]
    return out + [RequestRecord(index=warmup + i, endpoint="s", status=s) for i, s in enumerate(statuses)]


@given(st.lists(st.sampled_from(["ok", "http_error", "stream_error", "timeout"]), max_size=30),
       st.one_of(st.none(), st.integers(1, 40)), st.one_of(st.none(), st.text(min_size=1, max_size=20)))
def test_complete_only_when_nothing_went_wrong_all_planned_ran_and_one_completed(statuses, planned, error):
    complete, reason = run_verdict(error, planned, records(statuses, warmup=2))
    expected = error is None and (planned is None or len(statuses) >= planned) and "ok" in statuses
    assert complete is expected
    assert (reason is None) is complete
    if error:
        assert reason == error
    # What is written is read back as the same verdict.
    assert verdict_of({"complete": complete, "error": reason}).complete is complete


def test_failed_requests_are_counted_not_a_reason_to_be_incomplete():
    assert run_verdict(None, 3, records(["ok", "http_error", "timeout"])) == (True, None)
    assert run_verdict(None, 3, records(["ok", "ok"])) == (False, "only 2 of 3 planned requests ran")
    assert run_verdict(None, 2, records(["http_error", "http_error"], warmup=1)) == (False, "no request completed")


def tenant(name: str | None, n_requests: int | None = None) -> Tenant:
    load = LoadConfig(n_requests=n_requests) if n_requests else LoadConfig(duration_s=1.0)
    return Tenant(name, (0,), SyntheticWorkload(), load, ApiConfig(), {}, None, 0)


def test_the_tenants_verdict_fails_closed():
    """No tenant measured is never complete, and an error is the verdict whatever the tenants did."""
    done = records(["ok", "ok"])
    assert tenants_verdict(None, [], done) == (False, "no tenant sent load")
    assert tenants_verdict("server s was not ready", [], []) == (False, "server s was not ready")
    assert tenants_verdict("server s died", [tenant(None, 2)], done) == (False, "server s died")
    assert tenants_verdict(None, [tenant(None, 2)], done) == (True, None)
    for rec, name in zip(done, ["a", "b"]):
        rec.tenant = name
    assert tenants_verdict(None, [tenant("a"), tenant("b")], done) == (True, None)
    assert tenants_verdict(None, [tenant("a"), tenant("c")], done) == (False, "tenant c: no request completed")


def test_a_summary_that_says_complete_with_an_error_is_not_complete(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"complete": True, "error": "no request completed"}))
    assert read_verdict(tmp_path).complete is False
    write_unfinished(tmp_path, "s")
    assert read_verdict(tmp_path).reason.startswith("the run did not finish")
    (tmp_path / "summary.json").write_text("{half")
    assert not read_verdict(tmp_path).complete and "summary.json" in read_verdict(tmp_path).reason


def test_signals_raise_only_where_interruptible_and_wait_in_clean_up():
    interrupts = Interrupts()
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under a shell's `&`
    with interrupts.installed():
        with interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)  # recorded, not raised
            hurry = interrupts.hurry(interrupts.mark())
            assert not hurry()
            signal.raise_signal(signal.SIGHUP)
            assert hurry() and interrupts.received == ["SIGTERM", "SIGHUP"]
        with pytest.raises(Interrupted, match="SIGHUP"):  # the pending one, on the next checkpoint
            with interrupts.interruptible():
                pass
        with pytest.raises(Interrupted, match="SIGINT"):
            with interrupts.interruptible():
                signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def fault_config(tmp_path, mode: str, name: str = "f", **load) -> object:
    server = {"name": "faulty", "command": [*FAULT_SERVER, "--mode", mode], "port": free_port(),
              "ready_timeout_s": 30}
    return write_config(
        tmp_path / f"{name}.yaml", scenario=name, servers=[server],
        workload={"kind": "synthetic", "input_tokens": 8, "output_tokens": 4},
        load={"concurrency": 2, "n_requests": 6, "warmup_requests": 0, **load}, out=str(tmp_path / "runs"),
    )


def test_a_run_whose_every_request_failed_is_incomplete_and_exits_1(tmp_path):
    proc = run_cli("run", "--config", str(fault_config(tmp_path, "http500")))
    assert proc.returncode == 1
    doc = summary(run_folder(tmp_path / "runs"))
    assert doc["complete"] is False and doc["error"] == "no request completed" and doc["failed"] == 6
    assert proc.stderr.strip().splitlines()[-1] == "error: no request completed"


def test_any_exception_in_the_load_is_the_runs_error(tmp_path, monkeypatch, capsys):
    """A defect anywhere in the load phase: recorded with its traceback, never a complete run."""
    from gpushare.load import loadgen

    async def broken(self):
        raise RuntimeError("the load generator broke")

    monkeypatch.setattr(loadgen.LoadGroup, "run", broken)
    cfg = fault_config(tmp_path, "slow_tokens")
    assert cli.main(["run", "--config", str(cfg)]) == 1
    folder = run_folder(tmp_path / "runs")
    doc = summary(folder)
    assert doc["complete"] is False and doc["error"] == "RuntimeError: the load generator broke"
    assert "Traceback" in (folder / "traceback.txt").read_text()
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: RuntimeError: the load generator broke"


def test_matrix_redoes_cells_that_failed_and_goes_on_after_a_crash(tmp_path, monkeypatch, capsys):
    """A cell whose every request failed is not skipped on resume; a scenario that crashes is
    recorded as failed and the next one runs."""
    from gpushare.experiment import matrix

    failing = fault_config(tmp_path, "http500", name="failing")
    good = fault_config(tmp_path, "slow_tokens", name="good")
    out = tmp_path / "m"
    args = ["matrix", "--configs", str(failing), str(good), "--concurrency", "1", "--n-requests", "2",
            "--out", str(out)]
    assert cli.main(args) == 1
    cells = {c["scenario"]: c for c in json.loads((out / "matrix.json").read_text())["cells"]}
    assert cells["failing"]["status"] == "failed" and cells["failing"]["error"] == "no request completed"
    assert cells["good"]["status"] == "complete"
    assert cli.main(args) == 1  # resumed: the failed cell is redone, not skipped
    cells = {c["scenario"]: c for c in json.loads((out / "matrix.json").read_text())["cells"]}
    assert cells["failing"]["status"] == "failed" and cells["failing"]["error"] == "no request completed"
    assert cells["good"]["status"] == "skipped"

    real_preflight = matrix.preflight

    def crash_on_failing(config, say, cells=()):
        if config.scenario == "failing":
            raise ZeroDivisionError("a defect")
        return real_preflight(config, say, cells)

    monkeypatch.setattr(matrix, "preflight", crash_on_failing)
    (out / "good" / "c1_rep1" / "summary.json").unlink()  # make the good cell run again
    assert cli.main(args) == 1
    index = json.loads((out / "matrix.json").read_text())
    cells = {c["scenario"]: c for c in index["cells"]}
    assert cells["failing"] == {**cells["failing"], "status": "failed", "error": "ZeroDivisionError: a defect"}
    assert cells["good"]["status"] == "complete"
    assert "Traceback" in (out / "failing" / "traceback.txt").read_text()
    assert "Traceback" not in capsys.readouterr().err
