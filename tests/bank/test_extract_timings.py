"""Per-layer timings of `extract_bank` (read / tucker / write) in the manifest, and its progress lines with ETA."""

from __future__ import annotations

import logging
import re

import pytest

from xpert_pl.bank import KnowledgeBank, TuckerConsolidator, extract_bank
from xpert_pl.bank.extract import LayerClock, progress_line
from xpert_pl.resume import FinishedUnits

LINE = re.compile(r"layer (\d)/4 \(bank layer (\d)\): [\d.]+ s \(read [\d.]+, tucker [\d.]+, write [\d.]+\); ETA \d+ s")


def _extract(olmoe, selection, tmp_path, caplog) -> KnowledgeBank:
    finished = FinishedUnits(tmp_path / "partial", {"test": 1})
    consolidator = TuckerConsolidator(ranks=[4, 4, 1], n_iter_max=2)
    with caplog.at_level(logging.INFO, logger="xpert_pl.bank.extract"):
        return extract_bank(olmoe, selection, consolidator, progress=False, finished=finished)


def test_timings_are_recorded_per_layer_and_saved(olmoe, selection, tmp_path, caplog):
    bank = _extract(olmoe, selection, tmp_path, caplog)
    records = bank.manifest["timings"]["layers"]
    assert [r["layer"] for r in records] == [0, 1, 2, 3]
    assert [r["source_layers"] for r in records] == [[0], [1], [2], [3]]
    for record in records:
        parts = [record[f"{name}_seconds"] for name in ("read", "tucker", "write")]
        assert all(p >= 0 for p in parts) and record["resumed"] is False
        assert record["seconds"] == pytest.approx(sum(parts), abs=1e-3)
    assert bank.manifest["timings"]["seconds"] >= sum(r["seconds"] for r in records) - 1e-3
    saved = KnowledgeBank.load(bank.save(tmp_path / "bank")).manifest["timings"]
    assert saved == bank.manifest["timings"]


def test_a_progress_line_per_layer_with_eta(olmoe, selection, tmp_path, caplog):
    _extract(olmoe, selection, tmp_path, caplog)
    lines = [LINE.fullmatch(r.getMessage()) for r in caplog.records if r.getMessage().startswith("layer ")]
    assert all(lines) and [(m.group(1), m.group(2)) for m in lines] == [("1", "0"), ("2", "1"), ("3", "2"), ("4", "3")]
    assert lines[-1].group(0).endswith("ETA 0 s")  # nothing left after the last layer


def test_resumed_layers_are_marked_and_not_decomposed(olmoe, selection, tmp_path, caplog):
    _extract(olmoe, selection, tmp_path, caplog)
    again = _extract(olmoe, selection, tmp_path, caplog)
    records = again.manifest["timings"]["layers"]
    assert all(r["resumed"] for r in records)
    assert all(r["tucker_seconds"] == 0.0 and r["write_seconds"] == 0.0 for r in records)


def test_progress_line_format_and_eta():
    clock = LayerClock()
    clock.seconds.update(read=0.6, tucker=3.2, write=0.3)
    # 3 of 16 layers done in 12.3 s: 13 more at 4.1 s each.
    line = progress_line(3, 16, 2, clock, elapsed=12.3)
    assert line == "layer 3/16 (bank layer 2): 4.1 s (read 0.6, tucker 3.2, write 0.3); ETA 53 s"
