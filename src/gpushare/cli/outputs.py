"""`gpushare analyze` and `gpushare report`: tables, figures and the paper from run folders."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import app, err_console


RUNS_HELP = "Run folders, or folders holding them (searched recursively); several may follow one --runs."


@app.command()
def analyze(
    runs: List[Path] = typer.Option(..., "--runs", help=RUNS_HELP),
    more: Optional[List[Path]] = typer.Argument(None, hidden=True),
    out: Path = typer.Option(Path("runs/plots"), "--out", help="Where the tables and figures go."),
) -> None:
    """Tidy table (runs.csv), summary tables (CSV, Markdown, LaTeX) and figures from run folders."""
    from ..reporting.analysis import analyze as analyze_runs
    from ..reporting.run_tables import read_runs

    found = read_runs([*runs, *(more or [])])
    for line in found.notes():
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    written = analyze_runs(found, out)
    err_console.print(f"Wrote {len(written)} files to {out}", soft_wrap=True, highlight=False)
    print((out / "summary.md").read_text(), end="")


@app.command()
def report(
    runs: List[Path] = typer.Option(..., "--runs", help=RUNS_HELP),
    more: Optional[List[Path]] = typer.Argument(None, hidden=True),
    out: Path = typer.Option(Path("report"), "--out", help="Where report.tex, its figures and the PDF go."),
    html: bool = typer.Option(False, "--html", help="Also write report.html: one self-contained page (figures "
                              "inline, sortable tables, interactive capacity and noisy-neighbour curves)."),
) -> None:
    """An IEEE-style paper (IEEEtran) from the runs: tables, figures and observations from the data; PDF if TeX is installed."""
    from ..reporting.run_tables import read_runs
    from ..reporting.report import TEX_PACKAGES, build_pdf, tex_available, write_report

    found = read_runs([*runs, *(more or [])])
    for line in found.notes():
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    tex_path = write_report(found, out)
    if html:
        from ..reporting.html import write_html_report

        print(write_html_report(found, out, tex_path))
    if not tex_available():
        err_console.print(f"Wrote {tex_path}. TeX is not installed, so no PDF: apt-get install {TEX_PACKAGES}",
                          markup=False, soft_wrap=True)
        return
    print(build_pdf(tex_path))

