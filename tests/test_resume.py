"""Analysis and extraction resume from their finished pieces (domains, bank layers) after a crash, and the result
equals that of an uninterrupted run; pieces made with other settings are discarded."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

import xpert_pl.analysis.counter as counter
import xpert_pl.bank.extract as extract_module

# Lightning imported at collection (xpert_pl.cli does not load it): its log handler binds to pytest's capture, not
# to one test's capsys stream, which is closed by the time a later test logs.
import xpert_pl.training.lightning_cli  # noqa: F401
from xpert_pl.cli import main
from xpert_pl.resume import FinishedUnits, partial_directory


class Crash(RuntimeError):
    pass


def _failing_after(real, calls: list, limit: int):
    """`real`, recording each call, raising Crash on call number `limit + 1`."""

    def wrapped(*args, **kwargs):
        calls.append(args)
        if len(calls) > limit:
            raise Crash("killed")
        return real(*args, **kwargs)

    return wrapped


def _extract(source, analysis, out) -> list[str]:
    return ["extract", f"--model={source}", f"--selection={analysis / 'selection.json'}", f"--out_dir={out}"]


def test_extraction_resumes_from_finished_layers(tiny_source_dir, tiny_analysis_dir, tmp_path, monkeypatch):
    main(_extract(tiny_source_dir, tiny_analysis_dir, tmp_path / "reference"))
    real, calls = extract_module._consolidate, []
    monkeypatch.setattr(extract_module, "_consolidate", _failing_after(real, calls, limit=2 * 3 + 1))
    with pytest.raises(Crash):
        main(_extract(tiny_source_dir, tiny_analysis_dir, tmp_path / "bank"))
    partial = partial_directory(tmp_path / "bank")
    assert not (tmp_path / "bank").exists() and sorted(p.name for p in partial.iterdir() if p.is_dir()) == [
        "layer0",
        "layer1",
    ]
    calls.clear()
    monkeypatch.setattr(extract_module, "_consolidate", _failing_after(real, calls, limit=10**6))
    main(_extract(tiny_source_dir, tiny_analysis_dir, tmp_path / "bank"))
    assert len(calls) == 2 * 3  # layers 2 and 3 only, three matrices each
    assert not partial.exists()
    a, b = (load_file(tmp_path / d / "bank.safetensors") for d in ("reference", "bank"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _analyze(source, tokenizer, data_root, out) -> list[str]:
    return [
        "analyze",
        f"--model={source}",
        f"--data.tokenizer={tokenizer}",
        f"--data.data_root={data_root}",
        "--data.block_size=32",
        f"--data.cache_dir={out.parent / 'cache'}",
        "--plots=false",
        f"--out_dir={out}",
    ]


def test_analysis_resumes_from_finished_domains(
    tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, tmp_path, monkeypatch
):
    args = (tiny_source_dir, tiny_tokenizer_dir, tiny_data_root)
    main(_analyze(*args, tmp_path / "reference"))
    real, calls = counter.count_activations, []
    monkeypatch.setattr(counter, "count_activations", _failing_after(real, calls, limit=1))
    with pytest.raises(Crash):
        main(_analyze(*args, tmp_path / "analysis"))
    partial = partial_directory(tmp_path / "analysis")
    finished = [p.name for p in partial.iterdir() if p.is_dir()]
    assert len(finished) == 1 and not (tmp_path / "analysis").exists()
    calls.clear()
    monkeypatch.setattr(counter, "count_activations", _failing_after(real, calls, limit=10**6))
    main(_analyze(*args, tmp_path / "analysis"))
    counted = [list(c[1]) for c in calls]
    assert len(counted) == 2 and finished[0] not in {d for c in counted for d in c}
    a, b = (load_file(tmp_path / d / "counts.safetensors") for d in ("reference", "analysis"))
    assert all(torch.equal(a[k], b[k]) for k in a) and not partial.exists()


def test_an_analysis_resumed_on_other_data_counts_anew(
    tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, tmp_path, monkeypatch
):
    # A domain counted on one data root was kept when the rerun named another: counts of two corpora mixed.
    other = shutil.copytree(tiny_data_root, tmp_path / "other_root")
    real, calls = counter.count_activations, []
    monkeypatch.setattr(counter, "count_activations", _failing_after(real, calls, limit=1))
    with pytest.raises(Crash):
        main(_analyze(tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, tmp_path / "analysis"))
    calls.clear()
    monkeypatch.setattr(counter, "count_activations", _failing_after(real, calls, limit=10**6))
    main(_analyze(tiny_source_dir, tiny_tokenizer_dir, other, tmp_path / "analysis"))
    assert len(calls) == 3  # every domain counted on the named data root


def test_units_of_other_settings_are_discarded(tmp_path):
    units = FinishedUnits(tmp_path / "p", {"ranks": [1, 1, 1]})
    with units.writing("layer0") as tmp:
        (tmp / "x").write_text("1")
    assert FinishedUnits(tmp_path / "p", {"ranks": [1, 1, 1]}).done() == ["layer0"]
    assert FinishedUnits(tmp_path / "p", {"ranks": [2, 1, 1]}).done() == []


def test_a_unit_that_fails_midway_is_not_kept(tmp_path):
    units = FinishedUnits(tmp_path / "p", {})
    with pytest.raises(Crash), units.writing("layer0") as tmp:
        (tmp / "x").write_text("half")
        raise Crash("killed")
    assert units.done() == [] and not units.has("layer0")
