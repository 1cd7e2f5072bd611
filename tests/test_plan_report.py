"""The plan view of `gpushare plan`: plan_table.*, the plan figure and the report's Plan section,
from a plan.json written by hand (two GPUs, three tenants; the second GPU refuted by its proof
run). Every number is checked against the doc."""

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from gpushare import cli
from gpushare.measure.plan_doc import GpuDoc, PlanDoc, ProofRecord, SeatDoc, write_plan_doc
from gpushare.reporting.plan import find_plans, plan_sentences, read_plans, write_plan_report
from gpushare.reporting.report import build_pdf, tex_available, write_report
from gpushare.reporting.run_tables import read_runs

pytestmark = pytest.mark.timeout(240)

RESULTS = Path(__file__).resolve().parent.parent / "results"
PROOF_RUN = sorted((RESULTS / "h100").glob("2026*"))[0]
"""A committed run: analyze and report need one complete run beside the plan."""
MARGIN = 0.1


def seat(tenant: str, target: float, unit: str, capacity: float, attainment: float, slice_: str | None = None,
         good: int = 990) -> SeatDoc:
    return SeatDoc(tenant=tenant, slice=slice_, target=target, unit=unit, capacity=capacity,
                   headroom=1 - target / ((1 - MARGIN) * capacity), attainment_target=0.99, attainment=attainment,
                   wilson_low=attainment - 0.006, good=good, total=1000)


def plan_doc(folder: Path) -> PlanDoc:
    gpus = [GpuDoc(index=0, gpu="H100", placement="mps", proven=True, energy_per_token_j=0.412,
                   proof_run_dir=str(folder / "proofs" / "gpu0" / "proof"),
                   seats=[seat("chat", 4.0, "req/s", 5.0, 0.995, good=995),
                          seat("code", 2.0, "req/s", 3.2, 0.992, good=992)]),
            GpuDoc(index=1, gpu="H100", placement="mig_emulation", proven=False, energy_per_token_j=None,
                   proof_run_dir=str(folder / "proofs" / "gpu1" / "proof"),
                   seats=[seat("batch", 8.0, "requests in flight", 9.5, 0.95, slice_="3g.40gb", good=950)])]
    refuted = [ProofRecord(gpu="H100", placement="mig_emulation", tenants=["abc123"], held=False,
                           run_dir=gpus[1].proof_run_dir or "")]
    return PlanDoc(plan="fleet", status="unproven", why="not every GPU was proven after 3 searches: see the proof runs",
                   gpus_used=2, dedicated=3, lower_bound=2, method="exact", optimal=True, margin=MARGIN, rounds=3,
                   gpus=gpus, refuted=refuted, profiles=[], store=str(folder / "profiles"))


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    """A `plan --out` folder holding plan.json, one level under the folder --runs names."""
    folder = tmp_path_factory.mktemp("plans") / "fleet"
    folder.mkdir()
    write_plan_doc(folder, plan_doc(folder), "# Plan fleet\n")
    return folder


@pytest.fixture(scope="module")
def analysed(plan, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analysis")
    assert cli.main(["analyze", "--runs", str(plan.parent), str(PROOF_RUN), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(plan, tmp_path_factory) -> Path:
    return write_report(read_runs([plan.parent, PROOF_RUN]), tmp_path_factory.mktemp("report"))


def test_plan_files_are_found_at_or_under_the_folders_and_bad_ones_left_out(plan, tmp_path):
    assert find_plans([plan.parent]) == [plan / "plan.json"] == find_plans([plan])
    assert find_plans([plan / "proofs"]) == []
    (tmp_path / "plan.json").write_text('{"plan": "x"}')
    data = read_plans(find_plans([tmp_path, plan]))
    assert [doc.plan for _, doc in data.docs] == ["fleet"]
    assert len(data.left_out) == 1 and "does not read as a plan.json" in data.left_out[0]
    assert write_plan_report(read_plans([]), tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "plan.json"]


def test_analyze_writes_the_table_with_the_docs_numbers_and_the_figure(plan, analysed):
    for ext in ("png", "pdf"):
        assert (analysed / f"plan.{ext}").stat().st_size > 1000
    doc = plan_doc(plan)
    table = pd.read_csv(analysed / "plan_table.csv")
    seats = [(gpu, s) for gpu in doc.gpus for s in gpu.seats]
    assert len(table) == len(seats) == 3
    for r, (gpu, s) in zip(table.itertuples(), seats):
        assert (r.plan, r.gpu_index, r.gpu, r.placement, r.tenant) == ("fleet", gpu.index, gpu.gpu, gpu.placement,
                                                                        s.tenant)
        assert (r.target, r.unit, r.capacity, r.attainment, r.attainment_target) == (
            s.target, s.unit, s.capacity, s.attainment, s.attainment_target)
        assert r.headroom == pytest.approx(s.headroom) and r.wilson_low == pytest.approx(s.wilson_low)
        assert bool(r.proven) == gpu.proven and r.proof_run_dir == gpu.proof_run_dir
        assert (pd.isna(r.slice) if s.slice is None else r.slice == s.slice)
        assert (pd.isna(r.energy_per_token_j) if gpu.energy_per_token_j is None
                else r.energy_per_token_j == gpu.energy_per_token_j)
    md = (analysed / "plan_table.md").read_text()
    assert ("| 0 | H100 | mps | chat | – | 4 req/s | 5 | 11% | 0.995 (0.99) | 0.989 | yes | 0.412 | "
            "proofs/gpu0/proof |") in md
    assert ("| 1 | H100 | mig_emulation | batch | 3g.40gb | 8 requests in flight | 9.5 | 6% | 0.950 (0.99) | 0.944 "
            "| REFUTED | – | proofs/gpu1/proof |") in md
    tex = (analysed / "plan_table.tex").read_text()
    assert "mig\\_emulation" in tex and "11\\%" in tex and "--" in tex and "–" not in tex


def test_the_report_has_a_plan_section_after_isolation_with_the_docs_numbers(plan, report):
    tex = report.read_text()
    assert tex.index("\\section{Plan}") < tex.index("\\section{Observations}")
    assert "\\input{figures/plan_table.tex}" in tex and "figures/plan.pdf" in tex
    assert (report.parent / "figures" / "plan.pdf").exists()
    doc = plan_doc(plan)
    found = re.search(r"The plan fleet packs (\d+) tenants onto (\d+) GPUs \((\d+) H100\) against (\d+) dedicated, "
                      r"with a lower bound of (\d+) \(exact search, optimal\)\.", tex)
    assert found, tex
    assert tuple(map(int, found.groups())) == (3, doc.gpus_used, doc.gpus_used, doc.dedicated, doc.lower_bound)
    assert "GPU 0 (H100, mps: chat and code) was proven by its proof run." in tex
    assert "GPU 1 (H100, mig\\_emulation: batch) was refuted by its proof run: batch 0.950 against 0.99." in tex
    assert f"The plan is unproven: {doc.why}." in tex
    # the fullest seat: batch at 8 / 9.5 of its capacity, against chat's 4 / 5 and code's 2 / 3.2
    assert ("Each seat's target is at most 90\\% of its capacity there (margin 10\\%); the fullest seat is batch "
            "on GPU 1 at 84\\%.") in tex
    assert "1 group of tenants refuted by proof runs in its store will not be recommended again." in tex


def test_a_proven_plan_names_its_lowest_attainment_and_no_plan_says_why(plan):
    doc = plan_doc(plan)
    doc.gpus[1].proven, doc.gpus[1].seats[0].attainment, doc.refuted = True, 0.991, []
    lines = plan_sentences(doc)
    assert ("Every GPU was proven by a measured run of its tenants together at their targets (lowest attainment "
            "0.991 against target 0.99, batch on GPU 1).") in lines
    assert not any("refuted" in line for line in lines)
    empty = doc.model_copy(update={"status": "no_plan", "gpus": [], "gpus_used": None, "why": "t9 fits nowhere"})
    assert plan_sentences(empty) == ["Plan fleet found no plan: t9 fits nowhere."]


@pytest.mark.skipif(not tex_available() or not shutil.which("pdftotext"),
                    reason="TeX (texlive-publishers, latexmk) and pdftotext are not installed; `make tex` installs them")
def test_the_report_with_a_plan_builds_and_holds_its_numbers(report):
    text = subprocess.run(["pdftotext", str(build_pdf(report)), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "LAN" in text and "REFUTED" in text and "0.950 (0.99)" in text  # IEEEtran's headings are small capitals
    assert "packs 3 tenants onto 2 GPUs" in text
