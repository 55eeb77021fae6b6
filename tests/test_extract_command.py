"""`xpert extract`: dry run (shapes, ranks, memory from headers; nothing written) and grouped extraction."""

from __future__ import annotations

import re

import pytest

# Lightning imported at collection (xpert_pl.cli does not load it): its log handler binds to pytest's capture, not
# to one test's capsys stream, which is closed by the time a later test logs.
import xpert_pl.training.lightning_cli  # noqa: F401
from xpert_pl.bank import KnowledgeBank, TuckerConsolidator, format_plan, plan_extraction
from xpert_pl.bank.extract import bank_file_bytes
from xpert_pl.cli import main
from xpert_pl.models import load_causal_lm
from xpert_pl.sources.checkpoint import CheckpointExperts


def _extract(source, analysis, out, *extra: str) -> list[str]:
    return ["extract", f"--model={source}", f"--selection={analysis / 'selection.json'}", f"--out_dir={out}", *extra]


def _rows(output: str) -> list[list[str]]:
    """The table rows of a dry run's output, split on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.splitlines()[1:] if line[:1].isdigit()]


def test_dry_run_prints_the_real_shapes_and_writes_nothing(tiny_source_dir, tiny_analysis_dir, tmp_path, capsys):
    out = tmp_path / "bank"
    main(_extract(tiny_source_dir, tiny_analysis_dir, out, "--dry_run=true"))
    printed = capsys.readouterr().out
    rows = _rows(printed)
    # olmoe-tiny: H 128, I 256; the analysis selected 2 experts per layer; ranks (0.75, 0.75, 1.0).
    assert [row[:6] for row in rows[:3]] == [
        ["0", "0", "gate", "256 x 128 x 2", "192 x 96 x 2", "hooi"],
        ["0", "0", "up", "256 x 128 x 2", "192 x 96 x 2", "hooi"],
        ["0", "0", "down", "128 x 256 x 2", "96 x 192 x 2", "hooi"],
    ]
    assert [row[0] for row in rows] == [str(layer) for layer in range(4) for _ in range(3)]
    assert "total: 12 decompositions in 4 bank layers" in printed and "nothing was decomposed or written" in printed
    assert not out.exists()


def test_dry_run_with_energy_ranks_and_groups(tiny_source_dir, tiny_analysis_dir, tmp_path, capsys):
    out = tmp_path / "bank"
    extra = ["--group_layers=3", "--consolidator.ranks=[null, 0.5, 1.0]", "--consolidator.energy=0.9"]
    main(_extract(tiny_source_dir, tiny_analysis_dir, out, "--dry_run=true", *extra))
    printed = capsys.readouterr().out
    rows = _rows(printed)
    # 4 layers in 3 groups: [0, 1], [2], [3]; the first group stacks 2 x 2 experts.
    assert [row[:5] for row in rows[::3]] == [
        ["0", "0,1", "gate", "256 x 128 x 4", "<= 256 (energy >= 0.9) x 64 x 4"],
        ["1", "2", "gate", "256 x 128 x 2", "<= 256 (energy >= 0.9) x 64 x 2"],
        ["2", "3", "gate", "256 x 128 x 2", "<= 256 (energy >= 0.9) x 64 x 2"],
    ]
    assert rows[2][4] == "<= 128 (energy >= 0.9) x 128 x 4"  # down (128 x 256): half of 256 is 128
    assert "total: 9 decompositions in 3 bank layers" in printed and "bank file <=" in printed
    assert not out.exists()


def test_dry_run_validates_before_anything(tiny_source_dir, tiny_analysis_dir, tmp_path, capsys):
    out = tmp_path / "bank"
    with pytest.raises(SystemExit):
        main(_extract(tiny_source_dir, tiny_analysis_dir, out, "--dry_run=true", "--group_layers=5"))
    assert "group_layers must lie in [1, 4]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            _extract(tiny_source_dir, tiny_analysis_dir, out, "--dry_run=true", "--consolidator.ranks=[300, 1.0, 1.0]")
        )
    assert "must lie in [1, 256]" in capsys.readouterr().err
    assert not out.exists()


def test_plan_from_headers_matches_the_live_model_and_the_written_bank(tiny_source_dir, tiny_analysis_dir, tmp_path):
    selection = tiny_analysis_dir / "selection.json"
    consolidator = TuckerConsolidator(n_iter_max=5)
    from_headers = plan_extraction(CheckpointExperts(tiny_source_dir), selection, consolidator, group_layers=2)
    live = plan_extraction(load_causal_lm(tiny_source_dir), selection, consolidator, group_layers=2)
    assert from_headers == live
    assert format_plan(from_headers) == format_plan(live)
    out = tmp_path / "bank"
    main(_extract(tiny_source_dir, tiny_analysis_dir, out, "--group_layers=2", "--consolidator.n_iter_max=5"))
    bank = KnowledgeBank.load(out)
    assert bank.source_layers == [0, 1] and bank.manifest["grouping"]["groups"] == 2
    assert bank.source_groups == {0: [0, 1], 1: [2, 3]}
    assert [bank.entry(p.layer, p.matrix).factors.shape for p in from_headers] == [p.shape for p in from_headers]
    assert [bank.entry(p.layer, p.matrix).factors.ranks for p in from_headers] == [p.ranks for p in from_headers]
    # The planned file size bounds the real one from above, by no more than the header allowance.
    size = (out / "bank.safetensors").stat().st_size
    assert size <= bank_file_bytes(from_headers) <= size + 200 * len(bank.tensors())
