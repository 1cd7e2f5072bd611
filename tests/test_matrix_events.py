"""The one encoding of a matrix's events, which both executors (--gpus, --ray) send."""

from __future__ import annotations

import pytest

from gpushare.experiment.matrix_events import CellFinished, CellStarted, ServersTimed, decode_event, encode_event
from gpushare.measure.results import CellEntry, Location

ENTRY = CellEntry(scenario="mps", cell="c4", load_kind="concurrency", load=4.0, repeat=0, run_dir="mps/c4",
                  status="failed", error="server a died", wall_s=12.5, measured_s=0.0,
                  location=Location(node="n1", gpu_index=1, gpu_name="H200", gpu_uuid="GPU-1", gpu_memory_mib=143771),
                  config_hash="abc")


@pytest.mark.parametrize("event", [
    CellStarted(scenario="mps", cell="c4", where="GPU 1 of n1"),
    CellFinished(entry=ENTRY, exit_code=1),
    CellFinished(entry=CellEntry(scenario="b", cell="r2", load_kind="request_rate", load=None, repeat=1,
                                 run_dir="b/r2", status="not_run"), exit_code=0),
    ServersTimed(what="start", seconds=61.25),
    ServersTimed(what="stop", seconds=3.0),
], ids=lambda e: type(e).__name__)
def test_every_event_type_round_trips_as_one_json_line(event):
    line = encode_event(event)
    assert "\n" not in line
    back = decode_event(line)
    assert type(back) is type(event) and back == event
    assert decode_event(line.encode()) == event  # as a worker's pipe gives it


def test_an_unknown_event_is_refused():
    with pytest.raises(ValueError):
        decode_event('{"event": "cell_paused", "scenario": "x"}')
