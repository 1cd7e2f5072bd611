"""The IEEE-style report from real runs (the committed H100 runs): its text is written from the
data, and where TeX is installed (CI installs it) the PDF builds and carries the table's numbers."""

import shutil
import subprocess
from pathlib import Path

import pytest

from gpushare import cli
from gpushare.errors import RunFailure
from gpushare.reporting.report import build_pdf, tex_available, write_report
from gpushare.reporting.run_tables import read_runs

RESULTS = Path(__file__).resolve().parent.parent / "results" / "h100"
PROOF_RUNS = sorted(RESULTS.glob("2026*"))


def test_report_text_comes_from_the_runs(tmp_path):
    tex = write_report(read_runs(PROOF_RUNS), tmp_path).read_text()
    assert "\\documentclass[conference]{IEEEtran}" in tex and "\\input{figures/summary.tex}" in tex
    assert "NVIDIA H100 80GB HBM3" in tex and "vLLM 0.26.0" in tex and "dummy loader" in tex
    assert "At load 8, one server gave the most output throughput (1,081 tokens/s)" in tex
    assert "time-slicing -49\\%" in tex and "No request failed in any run." in tex
    assert "MPS [h100-mps-sm43] -15\\%" in tex  # two scenarios of one mode: told apart by name
    assert "not hardware isolation" in tex
    for name in ("throughput_tokens_per_s", "p99_latency_s", "gpu_timeline"):
        assert f"figures/{name}.pdf" in tex and (tmp_path / "figures" / f"{name}.pdf").exists()


@pytest.mark.skipif(not tex_available() or not shutil.which("pdftotext"),
                    reason="TeX (texlive-publishers, latexmk) and pdftotext are not installed; `make tex` installs them")
def test_report_pdf_builds_and_holds_the_numbers(tmp_path, capsys):
    assert cli.main(["report", "--runs", *map(str, PROOF_RUNS), "--out", str(tmp_path)]) == 0
    pdf = tmp_path / "report.pdf"
    assert capsys.readouterr().out.strip() == str(pdf)
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    for value in ("1,081", "1,033", "547", "0.443", "0.819", "h100-migemu-3g4g"):
        assert value in text, value


@pytest.mark.skipif(not tex_available(), reason="TeX is not installed")
def test_a_tex_failure_is_one_line(tmp_path):
    bad = tmp_path / "bad.tex"
    bad.write_text("\\documentclass{article}\\begin{document}\\undefinedmacro\\end{document}")
    with pytest.raises(RunFailure, match="report: latexmk failed on bad.tex: ! Undefined control sequence"):
        build_pdf(bad)
