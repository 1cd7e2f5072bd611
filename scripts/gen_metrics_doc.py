#!/usr/bin/env python3
"""Rewrite the generated table of docs/metrics.md from gpushare.measure.metric_catalog, keeping the
prose around it; run it after changing the catalogue (tests/test_metric_catalog.py checks).

    python scripts/gen_metrics_doc.py
"""

from pathlib import Path

from gpushare.measure.metric_catalog import with_generated_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"

DOC.write_text(with_generated_table(DOC.read_text()))
print(DOC)
