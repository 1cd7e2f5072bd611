"""The results module owns summary.json and matrix.json: every committed file reads as its model,
what a run writes reads back unchanged, a summary that cannot be placed is named, and the
matrix index carries earlier invocations forward as they were recorded."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gpushare.environment import git_state
from gpushare.experiment.matrix_book import kept_cell, previous_index, write_index
from gpushare.measure.metric_catalog import CATALOGUE
from gpushare.measure.results import (
    UNFINISHED,
    GpuWindow,
    Invocation,
    MetricBlock,
    Summary,
    SummaryUnreadable,
    read_matrix_index,
    read_run,
    write_summary,
    write_unfinished,
)
from helpers import run_folder
from test_tenants import run, two_tenants

RESULTS = Path(__file__).resolve().parent.parent / "results"
SUMMARIES = sorted(RESULTS.rglob("summary.json"))
INDEXES = sorted(RESULTS.rglob("matrix.json"))


def test_the_models_declare_the_catalogues_keys():
    assert list(MetricBlock.model_fields) == [m.key for m in CATALOGUE if m.where in ("summary", "slo")]
    assert list(GpuWindow.model_fields) == [m.key for m in CATALOGUE if m.where == "gpu"]


@pytest.mark.parametrize("path", SUMMARIES, ids=lambda p: str(p.parent.relative_to(RESULTS)))
def test_every_committed_summary_reads_as_a_summary(path):
    doc = json.loads(path.read_text())
    summary = read_run(path.parent)
    assert summary.verdict.complete
    assert summary.model_dump(exclude_unset=True, mode="json") == doc  # every key, nothing invented
    assert summary.p99_ttft_ms == doc["p99_ttft_ms"]
    # A cell whose samples were another GPU's has none (results/h200/fleet/ray/h200-mps/README.md).
    assert (summary.gpu.energy_j if summary.gpu else None) == (doc["gpu"] or {}).get("energy_j")
    for name, block in (summary.tenants or {}).items():
        assert block.p99_ttft_ms == doc["tenants"][name]["p99_ttft_ms"]


def test_a_runs_summary_round_trips_with_its_tenant_blocks(tmp_path):
    assert run(tmp_path, two_tenants(tmp_path)) == 0
    folder = run_folder(tmp_path / "runs")
    text = (folder / "summary.json").read_text()
    doc = json.loads(text)
    summary = read_run(folder)
    assert summary.model_dump(exclude_unset=True, mode="json") == doc
    chat, batch = summary.tenants["chat"], summary.tenants["batch"]
    assert chat.p99_ttft_ms == doc["tenants"]["chat"]["p99_ttft_ms"] and chat.slo_s == {"ttft": 0.05}
    assert chat.good_request_fraction is not None and batch.good_request_fraction is None  # batch has no SLO
    assert batch.load.steps is not None and [s.level for s in batch.by_step.steps] == [0.0, 2.0, 4.0]
    assert set(summary.per_endpoint) == {"chat-s", "batch-s"}
    assert [s.name for s in summary.servers] == ["chat-s", "batch-s"]
    # The one writer writes a summary read back as it wrote it: the same bytes.
    write_summary(tmp_path, summary)
    assert (tmp_path / "summary.json").read_text() == text


def test_a_summary_that_does_not_say_what_it_measured_is_unreadable_by_name(tmp_path):
    source = next((RESULTS / "h100").glob("*_h100-mps_c8"))
    doc = json.loads((source / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "sharing_mode"}))
    with pytest.raises(SummaryUnreadable, match=rf"^{tmp_path / 'summary.json'}: lacks sharing_mode$"):
        read_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({**doc, "gpu": {"gpu_samples": "many"}}))
    with pytest.raises(SummaryUnreadable, match=r"summary.json: gpu.gpu_samples: Input should be a valid integer"):
        read_run(tmp_path)
    # A misspelt key is refused, not kept: no summary is made of it to write, the reader names it.
    with pytest.raises(ValueError, match="gpu.energy_jj"):
        Summary.model_validate({**doc, "gpu": {**doc["gpu"], "energy_jj": 1.0}})
    (tmp_path / "summary.json").write_text(json.dumps({**doc, "p99_ttft": 1.0}))
    with pytest.raises(SummaryUnreadable, match=r"summary.json: p99_ttft: Extra inputs are not permitted"):
        read_run(tmp_path)
    # A run that has not finished says only that, and still reads: as not complete.
    write_unfinished(tmp_path, "s")
    assert read_run(tmp_path).verdict.reason == UNFINISHED
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    with pytest.raises(SummaryUnreadable, match="summary.json: missing"):
        read_run(tmp_path)


@pytest.mark.parametrize("path", INDEXES, ids=lambda p: str(p.parent.relative_to(RESULTS)))
def test_a_matrix_index_round_trips_and_keeps_earlier_invocations_as_recorded(path, tmp_path):
    original = json.loads(path.read_text())
    shutil.copy(path, tmp_path / "matrix.json")
    cells, history, _ = previous_index(tmp_path)
    assert read_matrix_index(tmp_path).cells == list(cells.values())
    index = write_index(tmp_path, list(cells.values()), history, Invocation(), time.monotonic(), len(cells))
    written = json.loads((tmp_path / "matrix.json").read_text())
    assert json.dumps(written["cells"]) == json.dumps(original["cells"])
    assert json.dumps(written["invocations"][:-1]) == json.dumps(original["invocations"])  # ints stay ints
    assert written["invocations"][-1]["cells_run"] == 0 and index.counts.model_dump() == original["counts"]
    assert read_matrix_index(tmp_path) == index
    # A cell whose folder is not here (the index was copied alone) is not skipped again.
    assert {kept_cell(tmp_path, c).status for c in cells.values()} <= {"not_run", "failed"}


def test_an_index_from_before_invocations_were_recorded_counts_its_wall_time(tmp_path):
    (tmp_path / "matrix.json").write_text(json.dumps({"cells": [], "wall_s": 12.5}))
    _, history, _ = previous_index(tmp_path)
    write_index(tmp_path, [], history, Invocation(), time.monotonic(), 0)
    written = json.loads((tmp_path / "matrix.json").read_text())
    assert written["invocations"][0] == {"started": None, "wall_s": 12.5, "measured_s": None}
    assert written["wall_s"] >= 12.5
    (tmp_path / "matrix.json").write_text("[]")
    assert previous_index(tmp_path) == ({}, [], [])


def test_env_json_says_whether_the_tree_differs_from_its_commit(tmp_path):
    """A run from a dirty tree is not the commit it names: git_state says so, with a hash of
    the difference; code outside a checkout, or untracked in one, names no commit."""
    repo, package = tmp_path / "repo", tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("venv/\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    clean = git_state(package)
    assert clean == {"checkout": True, "commit": git("rev-parse", "HEAD"), "dirty": False, "diff_sha256": None,
                     "changed_files": [], "untracked_files": []}
    (package / "__init__.py").write_text("x = 2\n")
    edited = git_state(package)
    assert edited["dirty"] and edited["changed_files"] == ["pkg/__init__.py"] and edited["diff_sha256"]
    git("add", "-A")
    assert git_state(package) == edited  # staged or not, the tree differs from HEAD the same way
    (package / "extra.py").write_text("")
    added = git_state(package)
    assert added["untracked_files"] == ["pkg/extra.py"] and added["diff_sha256"] != edited["diff_sha256"]

    installed = repo / "venv" / "pkg"  # ignored by the repository around it
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    for where in (installed, tmp_path / "nowhere"):
        where.mkdir(exist_ok=True)
        state = git_state(where)
        assert state["checkout"] is False and state["commit"] is None and state["dirty"] is None
        assert state["reason"].startswith(f"{where} is not a tracked folder of a git checkout")
