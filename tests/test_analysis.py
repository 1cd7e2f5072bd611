"""Analysis of real run folders (the committed H100 runs): tables agree with the summaries,
repeats show their spread, every figure is written, and bad input is one line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpushare import cli
from gpushare.reporting.analysis import analyze
from gpushare.reporting.run_tables import read_runs, summarize_runs

RESULTS = Path(__file__).resolve().parent.parent / "results" / "h100"
PROOF_RUNS = sorted(RESULTS.glob("2026*"))  # the six single runs, one per sharing mode
FIGURES = ["throughput_tokens_per_s", "p99_latency_s", "throughput_vs_p99_latency", "ttft_cdf", "e2e_latency_cdf",
           "gpu_timeline", "per_server"]


def test_tables_and_figures_from_the_h100_runs(tmp_path):
    written = analyze(read_runs(PROOF_RUNS), tmp_path)
    for name in FIGURES:
        for ext in ("png", "pdf"):
            path = tmp_path / f"{name}.{ext}"
            assert path in written and path.stat().st_size > 1000
    assert not (tmp_path / "token_lengths.png").exists()  # fixed lengths: no histogram
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 6 and (summary["runs"] == 1).all()
    for folder in RESULTS.glob("2026*/summary.json"):
        doc = json.loads(folder.read_text())
        row = summary[summary["scenario"] == doc["scenario"]].iloc[0]
        assert row["output_throughput"] == pytest.approx(doc["output_throughput"])
        assert row["p99_latency_s"] == pytest.approx(doc["p99_latency_s"])
        assert row["energy_per_output_token_j"] == pytest.approx(doc["gpu"]["energy_per_output_token_j"])
    md = (tmp_path / "summary.md").read_text()
    assert "| Scenario | Load | Failed (requests) | Output throughput (tokens/s) | P99 TTFT (ms) |" in md
    assert "| h100-baseline | 8 in flight | 0 | 1,081 | 150 | 7.3 | 0.98 | 0.443 | 1 |" in md
    tex = (tmp_path / "summary.tex").read_text()
    assert "\\begin{tabular}" in tex and "h100-timeslice & 8 in flight & 0 & 547 & 126 & 14.8 & 1.94" in tex


def test_repeated_runs_are_averaged_with_their_spread(tmp_path):
    source = next(RESULTS.glob("*_h100-baseline_c8"))
    for i, factor in enumerate((1.0, 0.9)):
        copy = tmp_path / "runs" / f"repeat-{i}"
        shutil.copytree(source, copy)
        doc = json.loads((copy / "summary.json").read_text())
        doc["output_throughput"] *= factor
        (copy / "summary.json").write_text(json.dumps(doc))
    runs = read_runs([tmp_path / "runs"]).runs
    summary = summarize_runs(runs)
    assert len(summary) == 1 and summary["runs"][0] == 2
    base = json.loads((source / "summary.json").read_text())["output_throughput"]
    assert summary["output_throughput"][0] == pytest.approx(0.95 * base)
    assert summary["output_throughput_std"][0] == pytest.approx(pd.Series([base, 0.9 * base]).std())


def test_incomplete_runs_are_left_out_and_bad_paths_are_one_line(tmp_path, capsys):
    source = next(RESULTS.glob("*_h100-mps_c8"))
    cut = tmp_path / "runs" / "cut"
    shutil.copytree(source, cut)
    doc = json.loads((cut / "summary.json").read_text())
    (cut / "summary.json").write_text(json.dumps({**doc, "complete": False}))
    found = read_runs([tmp_path / "runs"])
    assert found.runs.empty and found.left_out == [(cut, "marked incomplete")]
    assert cli.main(["analyze", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"note: left out {cut}: marked incomplete",
        "error: --runs: no complete runs to analyse (1 run folder(s) left out)",
    ]
    assert not (tmp_path / "out").exists()
    assert cli.main(["analyze", "--runs", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --runs: {tmp_path / 'nothing'} does not exist"


def test_length_histograms_where_runs_sent_varied_lengths(tmp_path):
    run = tmp_path / "runs" / "mixed"
    shutil.copytree(next(RESULTS.glob("*_h100-baseline_c8")), run)
    requests = pd.read_csv(run / "requests.csv")
    rng = np.random.default_rng(0)
    requests["input_tokens"] = rng.lognormal(4, 1.5, len(requests)).astype(int) + 4
    requests["output_tokens"] = rng.integers(4, 600, len(requests))
    requests.to_csv(run / "requests.csv", index=False)
    written = analyze(read_runs([run]), tmp_path / "out")
    for ext in ("png", "pdf"):
        path = tmp_path / "out" / f"token_lengths.{ext}"
        assert path in written and path.stat().st_size > 1000


def test_the_script_wrapper_keeps_its_flags(tmp_path):
    script = RESULTS.parent.parent / "scripts" / "analyze_results.py"
    proc = subprocess.run([sys.executable, str(script), "--runs", *map(str, PROOF_RUNS), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| h100-mps | 8 in flight | 0 | 1,033 |" in proc.stdout and (tmp_path / "p99_latency_s.png").exists()


def test_prefix_cache_hits_are_counted_where_servers_report_them(tmp_path):
    from gpushare.reporting.report import observations

    assert read_runs(PROOF_RUNS).runs["prefix_cache_hit_tokens"].isna().all()  # counters not recorded then
    matrix = read_runs([RESULTS / "matrix"]).runs
    assert len(matrix) == 9 and (matrix["prefix_cache_hit_tokens"] == 0).all()
    assert "No prompt token was answered from a server's prefix cache." in observations(summarize_runs(matrix), matrix)

    cell = tmp_path / "runs" / "c8"
    shutil.copytree(RESULTS / "matrix" / "h100-migemu-3g4g" / "c8_rep1", cell)
    doc = json.loads((cell / "summary.json").read_text())
    doc["server_counters"]["gpu-3g"]["prefix_cache_hits"] = 512.0
    (cell / "summary.json").write_text(json.dumps(doc))
    runs = read_runs([cell]).runs
    summary = summarize_runs(runs)
    assert summary["prefix_cache_hit_tokens"][0] == 512
    assert "answered 512 prompt tokens from their prefix caches" in " ".join(observations(summary, runs))



def test_the_backend_is_chosen_where_a_figure_is_drawn_not_on_import():
    """Importing the reporting modules (and the CLI) leaves matplotlib's backend to the process;
    drawing a figure selects the file backend."""
    code = ("import matplotlib, gpushare.cli, gpushare.reporting.report\n"
            "print(matplotlib.rcParams._get_backend_or_none())\n"
            "from gpushare.reporting.style import subplots\n"
            "subplots()\n"
            "print(matplotlib.get_backend())\n")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["None", "Agg"]
