"""The isolation view of `gpushare interfere`: tidy frames, table, figures and the report's
Isolation section, from a real interfere output (SSE test servers, two scenarios: two servers
time-sliced, and one server both tenants share). Every number is checked against the CSVs
interfere wrote."""

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gpushare import cli
from gpushare.measure.interference_doc import read_interference_doc
from gpushare.reporting.isolation import find_interference, isolation_table, read_interference
from gpushare.reporting.report import build_pdf, isolation_observations, tex_available, write_report
from gpushare.reporting.run_tables import read_runs
from helpers import write_config
from test_interfere import config_file
from test_tenants import server

pytestmark = pytest.mark.timeout(240)

FIGURES = ["noisy_neighbour", "slowdown_heatmap", "slo_attainment", "latency_cdf_solo_vs_shared"]
LABELS = {"split": "time-slicing", "packed": "one server"}
"""What the text calls each scenario: its sharing mode."""
RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.fixture(scope="module")
def interference(tmp_path_factory):
    """interfere's --out folder with two complete scenarios."""
    tmp = tmp_path_factory.mktemp("isolation")
    split = config_file(tmp, "split")
    packed = config_file(tmp, "packed", servers=[server("one")], sharing={"mode": "baseline"})
    doc = yaml.safe_load(packed.read_text())
    for tenant in doc["tenants"]:
        tenant["servers"] = ["one"]
    write_config(packed, **doc)
    out = tmp / "int"
    assert cli.main(["interfere", "--configs", str(split), str(packed), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(interference, tmp_path_factory):
    """report.tex (and, through analyze, every table and figure) from the interfere output."""
    return write_report(read_runs([interference.parent]), tmp_path_factory.mktemp("report"))


def csv(folder, name="interference.csv"):
    return pd.read_csv(folder / name)


def test_interference_files_are_found_at_or_under_the_folders(interference):
    file = interference / "interference.json"
    assert find_interference([interference]) == [file] == find_interference([interference.parent])
    assert find_interference([interference / "split"]) == []


def test_tidy_frames_hold_what_interfere_wrote(interference):
    data = read_interference(find_interference([interference]))
    assert not data.left_out and set(data.scores["scenario"]) == {"split", "packed"}
    keys = ["scenario", "tenant", "metric"]
    written = csv(interference).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(data.comparisons.sort_values(keys).reset_index(drop=True), written,
                                  check_dtype=False)
    scores = csv(interference, "interference_scores.csv").sort_values("scenario").reset_index(drop=True)
    shared = [c for c in scores.columns if c in data.scores.columns]
    assert set(scores.columns) - set(shared) == {"common_output_tokens"}
    pd.testing.assert_frame_equal(data.scores[shared].reset_index(drop=True), scores[shared], check_dtype=False)
    keys = ["scenario", "tenant"]
    tenants = csv(interference, "interference_tenants.csv").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(data.tenant_scores.sort_values(keys).reset_index(drop=True), tenants,
                                  check_dtype=False)
    keys = ["scenario", "tenant", "metric", "step"]
    levels = csv(interference, "interference_levels.csv").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(data.levels.sort_values(keys).reset_index(drop=True), levels, check_dtype=False)

    doc = json.loads((interference / "interference.json").read_text())
    for scenario, entry in doc["scenarios"].items():
        for tenant, block in entry["by_step"].items():
            mine = data.steps[(data.steps["scenario"] == scenario) & (data.steps["tenant"] == tenant)]
            assert (mine["aggressor"] == block["aggressor"]).all() and (mine["kind"] == block["kind"]).all()
            assert mine["level"].tolist() == [s["level"] for s in block["steps"]]
            assert mine["p99_ttft_ms"].tolist() == pytest.approx(
                [float("nan") if s["p99_ttft_ms"] is None else s["p99_ttft_ms"] for s in block["steps"]], nan_ok=True)
    assert data.victims() == ["chat"]  # batch's steps are its own load: the aggressor is no victim


def test_table_and_figures_come_with_the_analysis(interference, report):
    figures = report.parent / "figures"
    for name in FIGURES:
        for ext in ("png", "pdf"):
            assert (figures / f"{name}.{ext}").stat().st_size > 1000, name
    table = csv(figures, "interference_table.csv")
    written = csv(interference).set_index(["scenario", "tenant", "metric"]).sort_index()
    scores = csv(interference, "interference_scores.csv").set_index("scenario")
    tenants = csv(interference, "interference_tenants.csv").set_index(["scenario", "tenant"])
    levels = csv(interference, "interference_levels.csv")
    worst = levels[levels["worst"]].set_index(["scenario", "tenant", "metric"])
    assert len(table) == 4
    md = (figures / "interference_table.md").read_text()
    for row in table.itertuples():
        mine = written.loc[(row.scenario, row.tenant)]
        assert row.p99_ttft_solo_ms == pytest.approx(mine.loc["p99_ttft_ms", "solo"])
        assert row.p99_ttft_shared_ms == pytest.approx(mine.loc["p99_ttft_ms", "shared"])
        assert row.p99_ttft_slowdown == pytest.approx(mine.loc["p99_ttft_ms", "slowdown"])
        assert row.output_throughput_slowdown == pytest.approx(mine.loc["output_throughput", "slowdown"])
        assert row.slo_met_shared == pytest.approx(mine.loc["good_request_fraction", "shared"], nan_ok=True)
        assert row.fairness == pytest.approx(scores.loc[row.scenario, "fairness"])
        assert row.stp == pytest.approx(scores.loc[row.scenario, "stp"])
        assert row.common_output_throughput == pytest.approx(scores.loc[row.scenario, "common_output_throughput"])
        score = tenants.loc[(row.scenario, row.tenant)]
        assert (row.scored_on, row.kept) == (score["scored_on"], pytest.approx(score["kept"]))
        # The headline: a victim (chat, binned by batch's steps) at batch's worst loaded level,
        # batch itself over the whole window.
        if row.tenant == "chat":
            ttft, tpot = (worst.loc[(row.scenario, "chat", metric)] for metric in ("p99_ttft_ms", "p99_tpot_ms"))
            assert (row.p99_ttft_headline_shared, row.p99_ttft_headline_slowdown, row.p99_ttft_headline_level) == \
                pytest.approx((ttft["shared"], ttft["slowdown"], ttft["level"]))
            assert row.p99_ttft_headline_level in (2, 4) and row.p99_tpot_headline_slowdown == pytest.approx(
                tpot["slowdown"])
            at = (f" @ batch {row.p99_ttft_headline_level:g}", f" @ batch {tpot['level']:g}")
        else:
            assert row.p99_ttft_headline_slowdown == pytest.approx(row.p99_ttft_slowdown)
            assert pd.isna(row.p99_ttft_headline_level)
            at = ("", "")
        shown = (f"{row.p99_ttft_solo_ms:,.1f} → {row.p99_ttft_headline_shared:,.1f} "
                 f"(×{row.p99_ttft_headline_slowdown:.2f}){at[0]} | ×{row.p99_tpot_headline_slowdown:.2f}{at[1]} |")
        assert f"| {row.scenario} | {row.sharing_mode} | {row.tenant} | {shown}" in md
        assert f"| ×{row.kept:.2f} {row.scored_on} |" in md
    assert set(table.loc[table["tenant"] == "chat", "scored_on"]) == {"goodput"}
    assert set(table.loc[table["tenant"] == "batch", "scored_on"]) == {"throughput"}
    assert "| split | timeslice | chat |" in md and "100% → " in md  # chat has an SLO its light load meets
    assert "$\\rightarrow$" in (figures / "interference_table.tex").read_text()


def test_report_names_the_mode_that_isolated_the_victim_best(interference, report):
    tex = report.read_text()
    assert "\\section{Isolation}" in tex and "\\input{figures/interference_table.tex}" in tex
    for name in FIGURES:
        assert f"figures/{name}.pdf" in tex
    levels = csv(interference, "interference_levels.csv")
    chat = levels.query("tenant == 'chat' and metric == 'p99_ttft_ms' and worst").sort_values("slowdown")
    best, worst = chat.iloc[0], chat.iloc[-1]
    assert (f"{LABELS[best['scenario']].capitalize()} isolated chat best: its P99 TTFT shared at its aggressor's worst loaded "
            f"level ({best['level']:g}) was {best['slowdown']:.2f}$\\times$ its value alone") in tex
    assert f"against {worst['slowdown']:.2f}$\\times$ under {LABELS[worst['scenario']]}, the worst" in tex
    assert "tokens/s while every tenant loaded" in tex


def test_observations_state_the_isolating_modes_throughput_cost(interference):
    data = read_interference(find_interference([interference]))
    best = isolation_table(data).query("tenant == 'chat'").sort_values("p99_ttft_headline_slowdown")["scenario"].iloc[0]
    scores = data.scores.assign(stp=[1.0 if s == best else 2.0 for s in data.scores["scenario"]])
    (line,) = isolation_observations(dataclasses.replace(data, scores=scores))
    other = LABELS[({"split", "packed"} - {best}).pop()]
    assert "cost -50\\% of STP against the best, 2.00 under " + other in line


def test_scenarios_of_the_same_name_stay_apart_and_incomplete_ones_are_named(interference, tmp_path):
    doc = json.loads((interference / "interference.json").read_text())
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "interference.json").write_text(json.dumps(doc))
    doc["scenarios"]["packed"] = {"sharing_mode": "baseline", "phases": doc["scenarios"]["packed"]["phases"],
                                  "complete": False, "error": "phase(s) not complete: shared"}
    (tmp_path / "b" / "interference.json").write_text(json.dumps(doc))
    data = read_interference(find_interference([tmp_path]))
    assert sorted(data.scores["scenario"]) == ["a/packed", "a/split", "b/split"]
    assert data.left_out == [f"b/packed ({tmp_path / 'b' / 'interference.json'}): phase(s) not complete: shared"]


@pytest.mark.skipif(not tex_available() or not shutil.which("pdftotext"), reason="TeX or pdftotext not installed")
def test_the_report_with_an_isolation_section_builds(report):
    text = subprocess.run(["pdftotext", str(build_pdf(report)), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "ISOLATION" in text.upper() and "isolated chat best" in " ".join(text.split())


@pytest.mark.parametrize("path", sorted(RESULTS.rglob("interference.json")), ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_interference_doc_reads_and_round_trips(path):
    doc = read_interference_doc(path)
    assert doc.model_dump(mode="json", exclude_unset=True) == json.loads(path.read_text())  # nothing invented
    assert all(entry.complete == (entry.scores is not None) for entry in doc.scenarios.values())


def test_an_interference_doc_with_a_key_it_does_not_declare_is_left_out_by_name(interference, tmp_path):
    doc = json.loads((interference / "interference.json").read_text())
    doc["scenarios"]["split"]["scores"]["fairnes"] = 1.0
    (tmp_path / "interference.json").write_text(json.dumps(doc))
    data = read_interference(find_interference([tmp_path]))
    assert data.empty and data.left_out == [f"{tmp_path / 'interference.json'}: scenarios.split.scores.fairnes: "
                                            "Extra inputs are not permitted"]



def drawn_figures(paths, out, monkeypatch):
    """Every figure analyze draws from the runs under paths, by name, as matplotlib drew it."""
    from gpushare.reporting import analysis, isolation, run_figures
    from gpushare.reporting.style import save

    figures = {}

    def keep(fig, folder, name):
        figures[name] = fig
        return save(fig, folder, name)

    monkeypatch.setattr(run_figures, "save", keep)
    monkeypatch.setattr(isolation, "save", keep)
    analysis.analyze(read_runs(paths), out)
    return figures


def assert_mode_colours(figures, names, modes):
    """Every artist drawn for a mode (its gid names the mode) has that mode's colour, and each
    figure draws every mode."""
    from matplotlib.colors import to_rgba

    from gpushare.reporting.style import sharing_mode_colour

    for name in names:
        drawn = [a for a in figures[name].findobj() if a.get_gid() in modes]
        assert {a.get_gid() for a in drawn} == modes, name
        for artist in drawn:
            if hasattr(artist, "get_xdata"):  # a line
                colour = artist.get_color()
            else:  # a bar, or an unfilled histogram's outline
                colour = artist.get_facecolor() if artist.get_fill() else artist.get_edgecolor()
            assert to_rgba(colour)[:3] == sharing_mode_colour(artist.get_gid())[:3], (name, artist)


ANALYSIS_FIGURES = ["throughput_tokens_per_s", "p99_latency_s", "throughput_vs_p99_latency", "ttft_cdf",
                    "e2e_latency_cdf"]


def test_every_figure_colours_each_sharing_mode_alike(interference, tmp_path, monkeypatch):
    """Two sharing modes (split: timeslice, packed: baseline): every line, bar and step of every
    figure drawn for a mode has sharing_mode_colour(mode), and so do the heatmap's scenario
    labels, which are horizontal."""
    from matplotlib.colors import to_rgba

    from gpushare.reporting.style import sharing_mode_colour

    figures = drawn_figures([interference.parent], tmp_path, monkeypatch)
    shown = [name for name in FIGURES if name != "slowdown_heatmap"]
    assert_mode_colours(figures, ANALYSIS_FIGURES + shown, {"timeslice", "baseline"})
    data = read_interference(find_interference([interference]))
    modes_of = dict(zip(data.scores["scenario"], data.scores["sharing_mode"]))
    ticks = figures["slowdown_heatmap"].axes[0].get_xticklabels()
    assert len(ticks) == len(modes_of) and all(t.get_rotation() == 0 for t in ticks)
    for tick, scenario in zip(ticks, data.scores["scenario"]):
        assert to_rgba(tick.get_color()) == sharing_mode_colour(modes_of[scenario])
    # a scenario is named by its mode in words, never by its run's name
    words = {"timeslice": "time-slicing", "baseline": "one server"}
    assert [t.get_text().replace("\n", " ") for t in ticks] == [words[modes_of[s]] for s in data.scores["scenario"]]
    legend = [t.get_text() for leg in figures["noisy_neighbour"].legends for t in leg.get_texts()]
    assert {"time-slicing", "one server"} <= set(legend) and not set(modes_of) & set(legend)


def test_the_gpu_timeline_has_a_panel_per_phase(tmp_path, monkeypatch):
    """The committed H200 interference runs (four modes, three phases each): a column per phase,
    a row per quantity (utilisation and power smoothed, memory per server), each mode its colour."""
    folder = RESULTS / "h200" / "interference"
    figures = drawn_figures([folder], tmp_path, monkeypatch)
    data = read_interference(find_interference([folder]))
    assert_mode_colours(figures, ["gpu_timeline", "noisy_neighbour"], set(data.scores["sharing_mode"]))
    timeline = figures["gpu_timeline"]
    phases = data.phases["phase"].nunique()
    assert phases == 3 and len(timeline.axes) == 3 * phases
    assert [ax.get_title() for ax in timeline.axes[:phases]] == ["batch alone", "chat alone", "chat+batch shared"]
    assert timeline.axes[2 * phases].get_ylabel().replace("\n", " ") == "memory per server (GiB)"
    legend = " ".join(t.get_text() for leg in timeline.legends for t in leg.get_texts())
    assert "2 s rolling mean" in legend and "1st server: batch-4g, batch-gpu, shared" in legend


def test_a_matrix_timeline_titles_its_panels_by_mode_and_labels_each_runs_load(tmp_path, monkeypatch):
    """The committed H100 matrix (three modes, each at concurrency 8, 16 and 24): a column per
    scenario titled by its sharing mode, and each power line labelled with its run's load."""
    from matplotlib.colors import to_rgba

    folder = RESULTS / "h100" / "matrix"
    timeline = drawn_figures([folder], tmp_path, monkeypatch)["gpu_timeline"]
    columns = len(timeline.axes) // 3
    assert [ax.get_title() for ax in timeline.axes[:columns]] == ["one server", "MIG-like caps", "MPS"]
    power = timeline.axes[columns:2 * columns]
    assert all(sorted(t.get_text() for t in ax.texts) == ["16", "24", "8"] for ax in power)
    for ax in power:  # in the panel's colour, and apart enough to read
        heights = sorted(t.xy[1] for t in ax.texts)
        low, high = ax.get_ylim()
        assert all(b - a >= 0.08 * (high - low) for a, b in zip(heights, heights[1:]))
        assert {to_rgba(t.get_color()) for t in ax.texts} == {to_rgba(ax.lines[-1].get_color())}
