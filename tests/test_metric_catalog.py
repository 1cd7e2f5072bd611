"""The metric catalogue is the one declaration of summary.json's keys: what flat(),
gpu_window and analysis use is declared there, and docs/metrics.md's table is generated from it."""

from collections import Counter
from pathlib import Path

from gpushare.core.records import RequestRecord
from gpushare.measure.metric_catalog import CATALOGUE, flat, with_generated_table
from gpushare.measure.metrics import gpu_window, summarize
from gpushare.reporting.run_tables import GPU_FIELDS, METRIC_FIELDS, TABLE_METRICS

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def keys(*where: str) -> list[str]:
    return [m.key for m in CATALOGUE if m.where in where]


def record(i: int, status: str = "ok") -> RequestRecord:
    return RequestRecord(index=i, endpoint="a", scheduled=i, sent=i, first_token=i + 0.1, end=i + 1.0,
                         chunk_times=[i + 0.1, i + 1.0], chunk_tokens=[1, 9], input_tokens=5, output_tokens=10,
                         usage_reported=True, status=status)


def test_keys_are_unique():
    assert [key for key, n in Counter(m.key for m in CATALOGUE).items() if n > 1] == []


def test_flat_emits_exactly_the_declared_keys_in_catalogue_order():
    records = [record(0), record(1), record(2, status="timeout")]
    assert list(flat(summarize(records))) == keys("summary")
    assert list(flat(summarize(records, {"ttft": 0.5}))) == keys("summary", "slo")
    assert list(flat(summarize([]))) == keys("summary")


def test_gpu_window_emits_exactly_the_declared_gpu_keys():
    rows = [{"t": str(t), "gpu": "0", "energy_j": str(100.0 * t), "power_w": "100", "gpu_util_pct": "50",
             "mem_used_mib": "1000", "processes": "1:1:500"} for t in range(5)]
    assert list(gpu_window(rows, 0.0, 4.0, output_tokens=10, server_groups={"a": 1})) == keys("gpu")


def test_analysis_reads_declared_keys():
    assert set(METRIC_FIELDS) <= set(keys("summary", "run")) and set(GPU_FIELDS) <= set(keys("gpu"))
    assert {m.key for m in TABLE_METRICS} <= set(METRIC_FIELDS + GPU_FIELDS)


def test_metrics_doc_table_is_generated_from_the_catalogue():
    text = DOC.read_text()
    assert with_generated_table(text) == text, (
        "docs/metrics.md's metrics table is stale: run `python scripts/gen_metrics_doc.py`")
