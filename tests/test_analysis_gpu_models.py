"""Analysis across GPU models, from copies of the committed H100 matrix cells (and H200 cells of
two workloads) made to say they ran elsewhere (env.json's device name, or the summary's
`location`): runs of two models, or of two workloads, are never averaged together, and the
cross-GPU table holds what the files say. Each run's workload label comes from its own
config.yaml (the workload config's `label`); here the expected labels are built from that
YAML directly."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gpushare.config import ScenarioConfig
from gpushare.load.workloads.dataset import DatasetWorkload
from gpushare.load.workloads.sharegpt import ShareGPTWorkload
from gpushare.load.workloads.synthetic import SyntheticWorkload
from gpushare.measure.results import read_run_config
from gpushare.reporting.analysis import analyze
from gpushare.reporting.report import observations, write_report
from gpushare.reporting.run_figures import figure_series
from gpushare.reporting.run_tables import cross_gpu_table, read_runs, summarize_runs, write_cross_gpu

RESULTS = Path(__file__).resolve().parent.parent / "results"
MATRIX = RESULTS / "h100" / "matrix"
SHAREGPT_MATRIX = RESULTS / "h200" / "sharegpt-matrix"
H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
SYNTHETIC = "synthetic 512/128"  # what every committed H100 cell and the H200 synthetic cells sent
SHAREGPT = "sharegpt, ctx 4096"  # the H200 ShareGPT cells: the packaged file, prompt + output <= 4096


def yaml_label(folder: Path, tenant: str | None = None) -> str:
    """The workload label a run folder's config.yaml implies, read with PyYAML alone (not with
    gpushare's label code); "unknown" where there is no readable config. Knows the kinds the
    committed runs use: synthetic with fixed lengths, and ShareGPT."""
    try:
        doc = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return "unknown"
    workload = doc["workload"]
    if tenant is not None:
        workload = next(t for t in doc["tenants"] if t["name"] == tenant).get("workload") or workload
    if workload["kind"] == "synthetic":
        lengths = [workload[key] for key in ("input_tokens", "output_tokens")]
        assert all(length["dist"] == "fixed" for length in lengths)
        return "synthetic {}/{}".format(*(length["value"] for length in lengths))
    assert workload["kind"] == "sharegpt"
    path = workload.get("path")
    parts = [f"file {Path(path).name}"] if path else []
    parts += [f"{name} {workload[key]}" for key, name in (("output_tokens", "out"), ("max_output_tokens", "max out"),
                                                          ("max_model_len", "ctx")) if workload.get(key)]
    return ", ".join(["sharegpt", *parts])


def set_workload(folder: Path, workload: dict) -> None:
    """Rewrite a copied run's config.yaml to say it sent `workload`."""
    doc = yaml.safe_load((folder / "config.yaml").read_text())
    doc["workload"] = workload
    (folder / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def copy_cell(cell: str, to: Path, gpu: str | None = None, node: str | None = None, scenario: str | None = None,
              scale: float = 1.0, matrix: Path = MATRIX) -> Path:
    """A copy of a committed matrix cell (`h100-mps/c8_rep1`); where `gpu` is given, its env.json
    names that device (and `node` as host), its scenario is renamed and its metrics scaled."""
    shutil.copytree(matrix / cell, to)
    if gpu is not None:
        env = json.loads((to / "env.json").read_text())
        env["gpu"]["devices"][0]["name"] = gpu
        env["host"] = node or env["host"]
        (to / "env.json").write_text(json.dumps(env))
    doc = json.loads((to / "summary.json").read_text())
    doc["scenario"] = scenario or doc["scenario"]
    for key in ("output_throughput", "p99_ttft_ms", "p99_tpot_ms", "duration"):
        doc[key] *= scale
    (to / "summary.json").write_text(json.dumps(doc))
    return to


def facts(folder: Path) -> dict:
    """What a folder's own files say, read without gpushare (the workload from config.yaml)."""
    doc = json.loads((folder / "summary.json").read_text())
    location = doc.get("location") or {}
    device = json.loads((folder / "env.json").read_text())["gpu"]["devices"][0]
    return {"gpu_model": location.get("gpu_name", device["name"]), "sharing_mode": doc["sharing_mode"],
            "workload": yaml_label(folder),
            "load": doc["max_concurrency"], "scenario": doc["scenario"],
            **{key: doc[key] for key in ("output_throughput", "p99_ttft_ms", "p99_tpot_ms", "duration")}}


def test_one_scenario_on_two_gpu_models_is_two_rows(tmp_path):
    runs = tmp_path / "runs"
    h100 = copy_cell("h100-baseline/c8_rep1", runs / "h100")
    h200 = copy_cell("h100-baseline/c8_rep1", runs / "h200", gpu=H200, node="node-b", scale=1.5)
    placed = copy_cell("h100-baseline/c8_rep1", runs / "placed", scale=2.0)  # env.json says H100; location wins
    doc = json.loads((placed / "summary.json").read_text())
    doc["location"] = {"node": "node-c", "gpu_index": 0, "gpu_name": H200, "gpu_uuid": "GPU-x", "gpu_memory_mib": 143771}
    (placed / "summary.json").write_text(json.dumps(doc))
    nowhere = copy_cell("h100-baseline/c8_rep1", runs / "nowhere", scale=3.0)
    (nowhere / "env.json").unlink()

    table = read_runs([runs]).runs.set_index("run")
    assert table.loc[str(h100), ["gpu_model", "node"]].tolist() == [H100, "vm"]
    assert table.loc[str(h200), ["gpu_model", "node"]].tolist() == [H200, "node-b"]
    assert table.loc[str(placed), ["gpu_model", "node"]].tolist() == [H200, "node-c"]
    assert table.loc[str(nowhere), ["gpu_model", "node"]].tolist() == ["unknown", "unknown"]

    summary = summarize_runs(table.reset_index()).set_index("gpu_model")
    assert sorted(summary.index) == [H100, H200, "unknown"] and (summary["scenario"] == "h100-baseline").all()
    assert summary["runs"].to_dict() == {H100: 1, H200: 2, "unknown": 1}
    throughput = {folder: json.loads((folder / "summary.json").read_text())["output_throughput"]
                  for folder in (h100, h200, placed, nowhere)}
    assert summary.loc[H100, "output_throughput"] == pytest.approx(throughput[h100])
    assert summary.loc[H200, "output_throughput"] == pytest.approx((throughput[h200] + throughput[placed]) / 2)
    assert summary.loc["unknown", "output_throughput"] == pytest.approx(throughput[nowhere])

    assert figure_series(table).nunique() == 3  # one line per model in every figure
    # one sharing mode on three GPU models: nothing to compare, and the report says so
    said = observations(summarize_runs(table.reset_index()), table.reset_index())
    assert said[0].startswith("No two sharing modes ran the same workload at the same load")


@pytest.fixture(scope="module")
def two_gpus(tmp_path_factory) -> Path:
    """H100 cells as committed; H200 copies renamed h200-*, scaled, baseline c8 twice (repeats),
    and a mig_emulation cell the H100 side lacks."""
    runs = tmp_path_factory.mktemp("two-gpus")
    for cell in ("h100-baseline/c8_rep1", "h100-baseline/c16_rep1", "h100-mps/c8_rep1"):
        copy_cell(cell, runs / "h100" / cell)
    for cell, scale in (("h100-baseline/c8_rep1", 1.4), ("h100-baseline/c16_rep1", 1.3), ("h100-mps/c8_rep1", 1.2),
                        ("h100-migemu-3g4g/c8_rep1", 1.1)):
        scenario = cell.split("/")[0].replace("h100", "h200")
        copy_cell(cell, runs / "h200" / cell, gpu=H200, scenario=scenario, scale=scale)
    copy_cell("h100-baseline/c8_rep1", runs / "h200" / "h100-baseline" / "c8_rep2", gpu=H200,
              scenario="h200-baseline", scale=1.6)
    return runs


def expected_cross_gpu(runs: Path) -> pd.DataFrame:
    """Means per sharing mode, workload, load and GPU model, straight from the files."""
    rows = pd.DataFrame([facts(summary.parent) for summary in runs.rglob("summary.json")])
    return rows.groupby(["sharing_mode", "workload", "load", "gpu_model"]).agg(
        output_throughput=("output_throughput", "mean"), p99_ttft_ms=("p99_ttft_ms", "mean"),
        p99_tpot_ms=("p99_tpot_ms", "mean"), duration=("duration", "mean"), runs=("scenario", "size"),
        scenarios=("scenario", lambda names: ", ".join(sorted(set(names)))))


def test_the_cross_gpu_table_holds_each_models_means_and_their_ratio(two_gpus):
    cross = cross_gpu_table(read_runs([two_gpus]).runs)
    expected = expected_cross_gpu(two_gpus)
    assert set(expected.index.get_level_values("workload")) == {SYNTHETIC}  # every cell sent one workload
    keys = [(mode, SYNTHETIC, "closed_loop", load) for mode, load in (("baseline", 8), ("baseline", 16),
                                                                      ("mig_emulation", 8), ("mps", 8))]
    assert cross.index.tolist() == keys
    ratio = f"{H200} / {H100}"
    assert [group for group, _ in cross.columns] == [H100] * 6 + [H200] * 6 + [ratio] * 3
    for mode, workload, _, load in keys:
        row = cross.loc[(mode, workload, "closed_loop", load)]
        for model in (H100, H200):
            if (mode, workload, load, model) not in expected.index:
                assert pd.isna(row[(model, "runs")])  # that model did not run it
                continue
            want = expected.loc[(mode, workload, load, model)]
            assert row[(model, "scenarios")] == want["scenarios"] and row[(model, "runs")] == want["runs"]
            for field in ("output_throughput", "p99_ttft_ms", "p99_tpot_ms", "duration"):
                assert row[(model, field)] == pytest.approx(want[field]), (mode, load, model, field)
        for field in ("output_throughput", "p99_ttft_ms", "p99_tpot_ms"):
            if (mode, workload, load, H100) in expected.index:
                want = (expected.loc[(mode, workload, load, H200), field]
                        / expected.loc[(mode, workload, load, H100), field])
                assert row[(ratio, field)] == pytest.approx(want)
            else:
                assert pd.isna(row[(ratio, field)])
    assert cross.loc[("baseline", SYNTHETIC, "closed_loop", 8), (ratio, "output_throughput")] == pytest.approx(1.5)  # (1.4+1.6)/2


def test_observations_compare_the_modes_on_each_gpu_model_never_across_models(two_gpus):
    runs = read_runs([two_gpus]).complete_runs()
    said = observations(summarize_runs(runs), runs)
    expected = expected_cross_gpu(two_gpus).xs((SYNTHETIC, 8), level=("workload", "load"))
    for model, modes in ((H100, {"one server", "MPS"}), (H200, {"one server", "MPS", "MIG-like caps"})):
        (line,) = [line for line in said if line.startswith(f"On the {model}, at load 8, ")]
        best = expected.xs(model, level="gpu_model")["output_throughput"].max()
        assert f"({best:,.0f} tokens/s)" in line and "h100-" not in line and "h200-" not in line
        assert set(re.findall(r"one server|MPS|MIG-like caps", line)) == modes
    assert not [line for line in said if "load 16" in line]  # one mode ran it on each model


def test_analyze_writes_the_cross_gpu_table_only_across_models(two_gpus, tmp_path):
    written = analyze(read_runs([two_gpus]), tmp_path)
    for ext in ("csv", "md", "tex"):
        assert tmp_path / f"cross_gpu.{ext}" in written
    csv = pd.read_csv(tmp_path / "cross_gpu.csv").set_index(["sharing_mode", "load"])
    expected = expected_cross_gpu(two_gpus)
    mps_h200 = expected.loc[("mps", SYNTHETIC, 8, H200)]
    assert csv.loc[("mps", 8), f"{H200} output_throughput"] == pytest.approx(mps_h200["output_throughput"])
    assert csv.loc[("mps", 8), f"{H200} duration"] == pytest.approx(mps_h200["duration"])
    mps_h100 = expected.loc[("mps", SYNTHETIC, 8, H100)]
    md = (tmp_path / "cross_gpu.md").read_text()
    assert (f"| mps | {SYNTHETIC} | 8 (closed_loop) | h100-mps | {mps_h100['output_throughput']:,.0f} | "
            f"{mps_h100['p99_ttft_ms']:,.0f} | {mps_h100['p99_tpot_ms']:.1f} | {mps_h100['duration']:.0f} | "
            f"h200-mps | {mps_h200['output_throughput']:,.0f} |") in md
    assert f"| {H200} / {H100}: Output throughput |" in md
    assert "\\multicolumn{3}{c}{" + f"{H200} / {H100}" + "}" in (tmp_path / "cross_gpu.tex").read_text()
    summary_md = (tmp_path / "summary.md").read_text()
    assert summary_md.startswith("| Scenario | GPU | Load |") and f"| h200-mps | {H200} | 8 in flight |" in summary_md

    one_model = read_runs([two_gpus / "h100"]).runs
    assert cross_gpu_table(one_model) is None and write_cross_gpu(one_model, tmp_path / "none") == []


def test_tenant_rows_are_no_whole_run_to_compare():
    """An H200 run of tenants beside an H100 run: two models in the tidy table, but only one ran a whole run."""
    runs = read_runs([MATRIX / "h100-mps" / "c8_rep1", RESULTS / "h200" / "interference" / "h200-tenants-mps"]).runs
    assert sorted(runs["gpu_model"].unique()) == [H100, H200] and runs["tenant"].notna().any()
    assert cross_gpu_table(runs) is None


def test_two_workloads_of_one_mode_are_two_rows_never_one_average(tmp_path):
    """The committed H200 ShareGPT and synthetic MPS cells (same mode, same load) beside copies
    that say they ran on another model, scaled differently per workload."""
    other = "NVIDIA B200"
    runs = tmp_path / "runs"
    cells = {"sharegpt": "h200-sharegpt-mps/c16_rep1", "synthetic": "h200-synthetic-mps/c16_rep1"}
    scale = {"sharegpt": 2.0, "synthetic": 0.5}
    for kind, cell in cells.items():
        copy_cell(cell, runs / "h200" / cell, matrix=SHAREGPT_MATRIX)
        copy_cell(cell, runs / "other" / cell, gpu=other, scale=scale[kind], matrix=SHAREGPT_MATRIX)
    docs = {kind: json.loads((SHAREGPT_MATRIX / cell / "summary.json").read_text()) for kind, cell in cells.items()}
    assert docs["sharegpt"]["workload"]["kind"] == "sharegpt" and docs["synthetic"]["workload"] == {"kind": "synthetic"}
    label = {kind: yaml_label(SHAREGPT_MATRIX / cell) for kind, cell in cells.items()}
    assert label == {"sharegpt": SHAREGPT, "synthetic": SYNTHETIC}

    table = read_runs([runs]).runs
    labels = table.groupby(table["scenario"].str.split("-").str[1])["workload"].unique()
    assert labels.to_dict().keys() == {"sharegpt", "synthetic"}
    assert labels["sharegpt"].tolist() == [label["sharegpt"]] and labels["synthetic"].tolist() == [label["synthetic"]]

    cross = cross_gpu_table(table)
    assert cross.index.tolist() == [("mps", label["sharegpt"], "closed_loop", 16),
                                    ("mps", label["synthetic"], "closed_loop", 16)]
    ratio = f"{H200} / {other}"  # models sort by name: the B200 comes first
    for kind, workload in label.items():
        row = cross.loc[("mps", workload, "closed_loop", 16)]
        measured = docs[kind]["output_throughput"]
        assert row[(H200, "output_throughput")] == pytest.approx(measured)  # its own workload's, not a mean
        assert row[(other, "output_throughput")] == pytest.approx(measured * scale[kind])
        assert row[(H200, "scenarios")] == cells[kind].split("/")[0] and row[(H200, "runs")] == 1
        assert row[(ratio, "output_throughput")] == pytest.approx(1 / scale[kind])

    (tmp_path / "out").mkdir()
    written = write_cross_gpu(table, tmp_path / "out")
    md = (tmp_path / "out" / "cross_gpu.md").read_text()
    assert "| Sharing mode | Workload | Load |" in md
    assert f"| mps | {SHAREGPT} | 16 (closed_loop) |" in md and f"| mps | {SYNTHETIC} | 16 (closed_loop) |" in md
    assert len(written) == 3


def test_two_synthetic_workloads_of_one_mode_are_two_rows(tmp_path):
    """Copies of the H100 MPS cell on two models, half of them rewritten to have sent 256-token
    outputs: their summaries record no workload, their configs tell them apart."""
    runs = tmp_path / "runs"
    longer = {"kind": "synthetic", "input_tokens": {"dist": "fixed", "value": 512},
              "output_tokens": {"dist": "fixed", "value": 256}}
    scale = {("short", H100): 1.0, ("short", H200): 1.5, ("long", H100): 2.0, ("long", H200): 5.0}
    for (length, gpu), factor in scale.items():
        folder = copy_cell("h100-mps/c8_rep1", runs / length / gpu.split()[1], gpu=None if gpu == H100 else H200,
                           scale=factor)
        if length == "long":
            set_workload(folder, longer)
    label = {length: yaml_label(runs / length / "H200") for length in ("short", "long")}
    assert label == {"short": SYNTHETIC, "long": "synthetic 512/256"}

    cross = cross_gpu_table(read_runs([runs]).runs)
    assert cross.index.tolist() == [("mps", label["short"], "closed_loop", 8), ("mps", label["long"], "closed_loop", 8)]
    measured = json.loads((MATRIX / "h100-mps" / "c8_rep1" / "summary.json").read_text())["output_throughput"]
    for length, workload in label.items():
        row = cross.loc[("mps", workload, "closed_loop", 8)]
        for gpu in (H100, H200):
            assert row[(gpu, "runs")] == 1
            assert row[(gpu, "output_throughput")] == pytest.approx(measured * scale[(length, gpu)])
        assert row[(f"{H200} / {H100}", "output_throughput")] == pytest.approx(
            scale[(length, H200)] / scale[(length, H100)])


def test_runs_of_one_workload_share_one_label():
    """Every committed matrix run is labelled from its own config.yaml: the H100 cells and the
    H200 synthetic cells (other scenarios, servers and sharing modes) all sent 512/128 tokens."""
    runs = read_runs([MATRIX, SHAREGPT_MATRIX]).runs
    assert not runs.empty and runs["tenant"].isna().all()
    assert runs["workload"].tolist() == [yaml_label(Path(run)) for run in runs["run"]]
    by_label = runs.groupby("workload")["scenario"].agg(lambda names: sorted(set(names)))
    assert by_label.to_dict() == {
        SHAREGPT: ["h200-sharegpt-baseline", "h200-sharegpt-migemu-3g4g", "h200-sharegpt-mps"],
        SYNTHETIC: ["h100-baseline", "h100-migemu-3g4g", "h100-mps",
                    "h200-synthetic-baseline", "h200-synthetic-migemu-3g4g", "h200-synthetic-mps"]}


def test_tenants_are_labelled_from_their_own_workload_blocks():
    tenants = RESULTS / "h200" / "interference" / "h200-tenants-mps"
    runs = read_runs([MATRIX / "h100-mps" / "c8_rep1", tenants]).runs
    whole = runs[runs["tenant"].isna()]
    assert whole["workload"].tolist() == [SYNTHETIC]  # the H100 summary records no workload; its config does
    shared = runs[runs["tenant"].notna()]
    assert sorted(shared["run"].unique()) == [str(tenants / phase) for phase in ("shared", "solo-batch", "solo-chat")]
    assert [row.workload for row in shared.itertuples()] == [yaml_label(Path(row.run), row.tenant)
                                                            for row in shared.itertuples()]
    assert dict(zip(shared["tenant"], shared["workload"])) == {"chat": SYNTHETIC, "batch": "synthetic 256/512"}


def test_a_run_without_a_readable_config_is_unknown(tmp_path):
    """The run is still read (its metrics count); only its workload is unknown."""
    runs = tmp_path / "runs"
    copy_cell("h100-mps/c8_rep1", runs / "intact")
    missing = copy_cell("h100-mps/c8_rep1", runs / "missing")
    (missing / "config.yaml").unlink()
    broken = copy_cell("h100-mps/c8_rep1", runs / "broken")
    (broken / "config.yaml").write_text("workload: {kind: synthetic, input_tokens: [\n")
    listed = copy_cell("h100-mps/c8_rep1", runs / "listed")
    (listed / "config.yaml").write_text("- not\n- a mapping\n")
    retired = copy_cell("h100-mps/c8_rep1", runs / "retired")  # YAML, but not this version's schema
    set_workload(retired, {"kind": "replay", "trace": "old.jsonl"})
    tenants = runs / "tenants"
    shutil.copytree(RESULTS / "h200" / "interference" / "h200-tenants-mps" / "shared", tenants)
    (tenants / "config.yaml").unlink()

    read = read_runs([runs])
    assert read.left_out == []
    workload = {Path(row.run).name: row.workload for row in read.runs.itertuples() if pd.isna(row.tenant)}
    assert workload == {"intact": SYNTHETIC, "missing": "unknown", "broken": "unknown", "listed": "unknown",
                        "retired": "unknown"}
    assert read.runs.loc[read.runs["tenant"].notna(), "workload"].tolist() == ["unknown", "unknown"]
    assert read.runs["output_throughput"].notna().all()


# --- the labels and read_run_config on their own ---------------------------------------------


@pytest.mark.parametrize("workload, label", [
    ({"kind": "synthetic"}, "synthetic 128/128"),  # the defaults
    ({"kind": "synthetic", "input_tokens": 512, "output_tokens": 128}, "synthetic 512/128"),
    ({"kind": "synthetic", "input_tokens": 128, "output_tokens": 512}, "synthetic 128/512"),
    ({"kind": "synthetic", "input_tokens": {"dist": "fixed", "value": 64}}, "synthetic 64/128"),
    ({"kind": "synthetic", "input_tokens": {"dist": "uniform", "low": 100, "high": 300},
      "output_tokens": {"dist": "uniform", "low": 7, "high": 7}}, "synthetic U[100,300]/U[7,7]"),
    ({"kind": "synthetic", "input_tokens": {"dist": "normal", "mean": 200, "std": 50, "min": 10, "max": 400},
      "output_tokens": {"dist": "normal", "mean": 64.5, "std": 0.25, "min": 2, "max": 128}},
     "synthetic N(200,50)[10,400]/N(64.5,0.25)[2,128]"),
    ({"kind": "synthetic", "input_tokens": {"dist": "normal", "mean": 300, "std": 0, "max": 999},
      "output_tokens": {"dist": "uniform", "low": 1, "high": 2}}, "synthetic N(300,0)[1,999]/U[1,2]"),
])
def test_synthetic_labels(workload, label):
    assert SyntheticWorkload.model_validate(workload).label == label


@pytest.mark.parametrize("workload, label", [
    ({"kind": "dataset", "path": "/data/sets/prompts.jsonl"}, "dataset prompts.jsonl"),
    ({"kind": "dataset", "path": "prompts.jsonl", "output_tokens": 64}, "dataset prompts.jsonl, out 64"),
    ({"kind": "dataset", "path": "rel/p.jsonl", "output_tokens": {"dist": "uniform", "low": 8, "high": 16}},
     "dataset p.jsonl, out U[8,16]"),
    ({"kind": "dataset", "path": "p.jsonl", "output_tokens": {"dist": "normal", "mean": 32, "std": 4, "min": 1,
                                                              "max": 64}}, "dataset p.jsonl, out N(32,4)[1,64]"),
])
def test_dataset_labels(workload, label):
    assert DatasetWorkload.model_validate(workload).label == label


@pytest.mark.parametrize("workload, label", [
    ({"kind": "sharegpt"}, "sharegpt"),
    ({"kind": "sharegpt", "max_model_len": 4096}, "sharegpt, ctx 4096"),
    ({"kind": "sharegpt", "path": "/data/ShareGPT_V3.json"}, "sharegpt, file ShareGPT_V3.json"),
    ({"kind": "sharegpt", "output_tokens": 128}, "sharegpt, out 128"),
    ({"kind": "sharegpt", "max_output_tokens": 256, "max_model_len": 2048}, "sharegpt, max out 256, ctx 2048"),
    ({"kind": "sharegpt", "path": "sg.json", "output_tokens": 100, "max_output_tokens": 200, "max_model_len": 8192},
     "sharegpt, file sg.json, out 100, max out 200, ctx 8192"),
])
def test_sharegpt_labels(workload, label):
    assert ShareGPTWorkload.model_validate(workload).label == label


def test_read_run_config_types_the_runs_config():
    config = read_run_config(MATRIX / "h100-mps" / "c8_rep1")
    assert isinstance(config, ScenarioConfig) and config.scenario == "h100-mps"
    assert isinstance(config.workload, SyntheticWorkload) and config.workload.label == SYNTHETIC
    config = read_run_config(SHAREGPT_MATRIX / "h200-sharegpt-mps" / "c16_rep1")
    assert isinstance(config.workload, ShareGPTWorkload) and config.workload.max_model_len == 4096


@pytest.mark.parametrize("text", [None, "scenario: [unclosed\n", "workload: {kind: synthetic\n", "- a list\n",
                                  "just text\n", "", "unknown_key: 1\n", "workload: {kind: replay}\n",
                                  "workload: {kind: synthetic, input_tokens: 0}\n"])
def test_read_run_config_is_none_without_a_readable_config(tmp_path, text):
    """None where config.yaml is missing, not YAML, not a mapping, or not this version's schema."""
    if text is not None:
        (tmp_path / "config.yaml").write_text(text)
    assert read_run_config(tmp_path) is None
    assert read_run_config(tmp_path / "no-such-run") is None


def test_read_run_config_is_none_for_a_config_that_is_not_text(tmp_path):
    (tmp_path / "config.yaml").write_bytes(b"\xff\xfe\x00s\x00c\x00")
    assert read_run_config(tmp_path) is None


def test_the_report_names_every_gpu_model(two_gpus, tmp_path):
    tex = write_report(read_runs([two_gpus]), tmp_path).read_text()
    models = f"{H100} and {H200}"
    assert f"on one GPU per run, of 2 models ({models}), under the sharing\nmodes" in tex
    assert f"Hardware: 2 GPU models, one GPU per run: {models}; the first run's driver " in tex
    assert "\\input{figures/cross_gpu.tex}" in tex

    one = write_report(read_runs([two_gpus / "h100"]), tmp_path / "one").read_text()
    assert f"on one {H100} under the sharing\nmodes" in one and f"Hardware: {H100}, driver " in one
    assert "GPU models" not in one and "cross_gpu" not in one


def test_the_report_says_when_its_runs_sent_different_workloads(tmp_path):
    """Runs of two workloads: the abstract names both instead of claiming one."""
    runs = read_runs([RESULTS / "h200" / "sharegpt-matrix"])
    labels = sorted(runs.runs["workload"].unique())
    assert len(labels) == 2
    tex = " ".join(write_report(runs, tmp_path).read_text().split())
    assert f"with 2 workloads ({'; '.join(labels)}) at loads" in tex
    one = " ".join(write_report(read_runs([RESULTS / "h100" / "matrix"]), tmp_path / "one").read_text().split())
    assert "with the same workload at loads" in one
