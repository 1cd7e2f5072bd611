"""The capacity view of `gpushare capacity`: the tidy frame, capacity_table.*, the capacity figure
and the report's Isolation section, from a capacity.json written by hand (two scenarios, chat
alone and beside batch at two levels, one search unresolved). Every number is checked against
the doc."""

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from gpushare import cli
from gpushare.config import CapacityConfig
from gpushare.measure.capacity_doc import CapacityDoc, CapacityRow, ProbeEntry, write_capacity_doc
from gpushare.reporting.capacity import capacity_sentences, find_capacity, read_capacity
from gpushare.reporting.isolation import find_interference, read_interference
from gpushare.reporting.report import build_pdf, isolation_section, tex_available, write_report
from gpushare.reporting.run_tables import read_runs
from helpers import write_config
from test_capacity import pair

pytestmark = pytest.mark.timeout(240)

RESULTS = Path(__file__).resolve().parent.parent / "results"
PROOF_RUN = sorted((RESULTS / "h100").glob("2026*"))[0]
"""A committed run: analyze and report need one complete run beside the capacity data."""

# (scenario, mode, beside) -> (capacity, first_infeasible, resolved)
SEARCHES = {
    ("split", "timeslice", ""): (12.5, 13.75, True),
    ("split", "timeslice", "batch=4"): (8.0, 8.8, True),
    ("split", "timeslice", "batch=16"): (5.0, 5.5, True),
    ("mps", "mps", ""): (12.0, 13.2, True),
    ("mps", "mps", "batch=4"): (10.5, 11.55, True),
    ("mps", "mps", "batch=16"): (6.0, 9.0, False),
}
UNRESOLVED_WHY = "probe budget (12) spent; bracket [6, 9] wider than the tolerance"


def row(scenario: str, mode: str, beside: str) -> CapacityRow:
    capacity, infeasible, resolved = SEARCHES[(scenario, mode, beside)]
    alone = SEARCHES[(scenario, mode, "")][0]
    return CapacityRow(
        scenario=scenario, sharing_mode=mode, tenant="chat", knob="request_rate", beside=beside, target=0.99,
        capacity=capacity, first_infeasible=infeasible, attainment_at_capacity=0.998, wilson_low_at_capacity=0.991,
        wilson_high_at_capacity=0.9995, attainment_at_first_infeasible=0.95, wilson_low_at_first_infeasible=0.93,
        wilson_high_at_first_infeasible=0.97, binding="ttft", probes=6, resolved=resolved,
        why="bracket within the tolerance" if resolved else UNRESOLVED_WHY, non_monotone=[],
        capacity_kept=capacity / alone if beside else None, capacity_run_dir=None, first_infeasible_run_dir=None)


@pytest.fixture(scope="module")
def capacity(tmp_path_factory):
    """A capacity --out folder: capacity.json by hand, and one probe's config.yaml (chat on an
    open loop, batch on a closed one), from which the neighbour's knob is read."""
    out = tmp_path_factory.mktemp("capacity") / "cap"
    probe = out / "split" / "batch4-r8"
    probe.mkdir(parents=True)
    write_config(probe / "config.yaml", **pair(out))
    rows = [row(*key) for key in SEARCHES]
    probes = [ProbeEntry(scenario="split", beside="batch=4", level=8.0, window=1, good=400, total=401,
                         attainment=400 / 401, wilson_low=0.986, wilson_high=0.9996, judged={"0.99": "feasible"},
                         run_dir="/elsewhere/cap/split/batch4-r8")]
    searches = {name: CapacityConfig(tenant="chat", beside={"batch": [4, 16]}) for name in ("split", "mps")}
    write_capacity_doc(out, CapacityDoc(searches=searches, rows=rows, probes=probes))
    return out


@pytest.fixture(scope="module")
def analysed(capacity, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    assert cli.main(["analyze", "--runs", str(capacity), str(PROOF_RUN), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(capacity, tmp_path_factory):
    return write_report(read_runs([capacity, PROOF_RUN]), tmp_path_factory.mktemp("report"))


def doc_value(scenario: str, beside: str, index: int):
    mode = "mps" if scenario == "mps" else "timeslice"
    return SEARCHES[(scenario, mode, beside)][index]


def test_capacity_files_are_found_and_read_into_one_frame(capacity):
    file = capacity / "capacity.json"
    assert find_capacity([capacity.parent]) == [file] == find_capacity([capacity])
    assert find_capacity([capacity / "split"]) == []
    data = read_capacity([file])
    assert not data.left_out and len(data.rows) == len(SEARCHES)
    for r in data.rows.itertuples():
        assert (r.capacity, r.first_infeasible, r.resolved) == SEARCHES[(r.scenario, r.sharing_mode, r.beside)]
        assert (r.neighbours, r.level) == (("batch", float(r.beside.split("=")[1])) if r.beside else ("", r.level))
    # alone first, then batch's levels in numeric order (4 before 16), per scenario
    assert list(data.rows["beside"]) == ["", "batch=4", "batch=16"] * 2
    # the probe folder beside the file (its recorded run_dir is gone) says batch loads a concurrency;
    # mps has no probe to read it from, and none is guessed
    knobs = data.rows[data.rows["beside"] != ""].groupby("scenario")["neighbour_knob"]
    assert knobs.agg(lambda v: set(v.dropna())).to_dict() == {"split": {"concurrency"}, "mps": set()}


def test_a_capacity_json_that_does_not_read_is_left_out_with_why(tmp_path):
    (tmp_path / "capacity.json").write_text('{"tenant": "chat"}')
    data = read_capacity(find_capacity([tmp_path]))
    assert data.empty and len(data.left_out) == 1 and "does not read as a capacity.json" in data.left_out[0]


def test_analyze_writes_the_table_with_the_docs_numbers_and_kept_beside_over_alone(analysed):
    for ext in ("png", "pdf"):
        assert (analysed / f"capacity.{ext}").stat().st_size > 1000
    table = pd.read_csv(analysed / "capacity_table.csv", keep_default_na=False, na_values=[""])
    assert len(table) == len(SEARCHES)
    for r in table.itertuples():
        beside = "" if pd.isna(r.beside) else r.beside
        assert r.capacity == doc_value(r.scenario, beside, 0)
        assert r.first_infeasible == doc_value(r.scenario, beside, 1)
        assert bool(r.resolved) == doc_value(r.scenario, beside, 2)
        assert r.capacity_alone == doc_value(r.scenario, "", 0) and r.unit == "req/s"
        if beside:
            assert r.kept == pytest.approx(r.capacity / r.capacity_alone)
        else:
            assert pd.isna(r.kept)
    md = (analysed / "capacity_table.md").read_text()
    assert "| Scenario | Mode | Tenant | Target | Alone (req/s) | Beside batch=4 (req/s) | Beside batch=16 (req/s) |" in md
    assert "| split | timeslice | chat | 0.99 | 12.5 | 8 (×0.64) | 5 (×0.40) |" in md
    assert "| mps | mps | chat | 0.99 | 12 | 10.5 (×0.88) | 6* (×0.50) |" in md
    assert f"* unresolved: mps batch=16, target 0.99: {UNRESOLVED_WHY}" in md
    tex = (analysed / "capacity_table.tex").read_text()
    assert "8 ($\\times$0.64)" in tex and "6* ($\\times$0.50)" in tex


MODE_NAMES = {"split": "time-slicing", "mps": "MPS"}
"""What the text calls each scenario: its sharing mode (one scenario per mode here)."""


def sentence(tex: str, scenario: str) -> re.Match:
    found = re.search(rf"chat holds ([\d.]+) req/s alone under {MODE_NAMES[scenario]}, ([\d.]+)( \(unresolved\))? "
                      r"beside batch=4 \(kept ([\d.]+)\) and ([\d.]+)( \(unresolved\))? beside batch=16 "
                      r"\(kept ([\d.]+)\)\.", tex)
    assert found, scenario
    return found


def test_report_leads_the_isolation_section_with_capacity_its_numbers_the_tables(analysed, report):
    tex = report.read_text()
    assert "\\section{Isolation}" in tex and "\\input{figures/capacity_table.tex}" in tex
    assert "figures/capacity.pdf" in tex and (report.parent / "figures" / "capacity.pdf").exists()
    assert "interference_table" not in tex  # no interfere output: the section holds the capacity part alone
    assert "Hollow points are unresolved." in tex and "An arrow" not in tex  # every bracket here is closed
    assert ("chat holds 12.5 req/s alone under time-slicing, 8 beside batch=4 (kept 0.64) and 5 beside "
            "batch=16 (kept 0.40).") in tex
    table = pd.read_csv(analysed / "capacity_table.csv", keep_default_na=False, na_values=[""])
    table["beside"] = table["beside"].fillna("")
    for scenario in ("split", "mps"):
        found = sentence(tex, scenario)
        mine = table[table["scenario"] == scenario].set_index("beside")
        assert float(found[1]) == mine.loc["", "capacity"]
        assert float(found[2]) == mine.loc["batch=4", "capacity"]
        assert float(found[5]) == mine.loc["batch=16", "capacity"]
        assert found[4] == f"{mine.loc['batch=4', 'kept']:.2f}"
        assert found[7] == f"{mine.loc['batch=16', 'kept']:.2f}"
        assert bool(found[6]) == (not mine.loc["batch=16", "resolved"])
    assert ("Beside batch=16, chat kept the most of its capacity alone under MPS (0.50) and the least under "
            "time-slicing (0.40).") in tex
    assert f"Unresolved: chat under MPS, batch=16, target 0.99: {UNRESOLVED_WHY}." in tex
    assert "split" not in tex.split("\\section{Isolation}")[1].split("\\begin{table")[0]  # prose names modes


def test_with_interference_data_the_capacity_part_comes_first():
    data = read_interference(find_interference([RESULTS / "h200" / "interference"]))
    assert not data.empty
    section = isolation_section(data, Path("nowhere"), "CAPACITY PART\n")
    assert section.index("\\section{Isolation}") < section.index("CAPACITY PART") < section.index("Each scenario ran")
    none = dataclasses.replace(data, scores=data.scores.iloc[0:0])
    assert isolation_section(none, Path("nowhere"), "") == ""
    assert isolation_section(none, Path("nowhere"), "CAPACITY PART\n") == "\n\\section{Isolation}\nCAPACITY PART\n"


def test_sentences_say_at_least_and_less_than_where_the_bracket_is_open(capacity, tmp_path):
    doc = CapacityDoc.model_validate_json((capacity / "capacity.json").read_text())
    doc.rows[0].first_infeasible = None  # split alone: no level found infeasible
    doc.rows[3].capacity, doc.rows[3].first_infeasible = 0.0, 0.2  # mps alone: not even the lowest level held
    write_capacity_doc(tmp_path, doc)
    lines = capacity_sentences(read_capacity(find_capacity([tmp_path])))
    assert ("chat holds at least 12.5 req/s alone under time-slicing, 8 beside batch=4 (kept 0.64) and 5 "
            "beside batch=16 (kept 0.40).") in lines
    # kept is left out where nothing held alone: no share of nothing
    assert "chat holds less than 0.2 req/s alone under MPS, 10.5 beside batch=4 and 6 (unresolved) beside batch=16." in lines


@pytest.mark.skipif(not tex_available() or not shutil.which("pdftotext"),
                    reason="TeX (texlive-publishers, latexmk) and pdftotext are not installed; `make tex` installs them")
def test_the_report_with_capacity_builds_and_holds_its_numbers(report):
    pdf = build_pdf(report)
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "SOLATION" in text and "Beside batch=16 (req/s)" in text  # IEEEtran's headings are small capitals
    assert "kept 0.64" in text and "6* (×0.50)" in text and "5 (×0.40)" in text


def test_the_figure_names_each_line_by_its_mode_and_brackets_each_level_apart(capacity, tmp_path, monkeypatch):
    """Each scenario's line is labelled with its sharing mode in words, and its search's bracket
    is one bar per level, from the capacity up to first_infeasible, beside the other scenario's
    bars: nothing is filled between levels, where nothing was measured."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgba

    from gpushare.reporting import capacity as view
    from gpushare.reporting.style import save, sharing_mode_colour

    drawn = {}

    def keep(fig, out, name):
        drawn[name] = fig
        return save(fig, out, name)

    monkeypatch.setattr(view, "save", keep)
    view.plot_capacity(read_capacity(find_capacity([capacity])), tmp_path)
    ax = drawn[view.FIGURE].axes[0]
    assert {t.get_text() for t in ax.texts} == {"time-slicing", "MPS"}
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    for scenario, mode in (("split", "timeslice"), ("mps", "mps")):
        bars = [p for p in ax.patches if p.get_gid() == mode]
        expected = sorted(SEARCHES[(scenario, mode, b)][:2] for b in ("", "batch=4", "batch=16"))
        assert sorted((p.get_y(), round(p.get_y() + p.get_height(), 6)) for p in bars) == expected
        assert all(to_rgba(p.get_facecolor())[:3] == sharing_mode_colour(mode)[:3] for p in bars)
    spans = {mode: [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches if p.get_gid() == mode]
             for mode in ("timeslice", "mps")}
    for (a0, a1), (b0, b1) in zip(sorted(spans["timeslice"]), sorted(spans["mps"])):
        assert a1 <= b0 or b1 <= a0  # side by side at each level, never over each other
