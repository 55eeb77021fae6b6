"""Corpus domains and their deterministic hash splits."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from xpert_pl.data import DomainSpec, default_domains
from xpert_pl.data.corpus import is_validation, load_domain_texts, resolve_files
from xpert_pl.paths import DATA_ROOT_ENV, DataRootError, data_root


def _texts(ds) -> list[str]:
    return [row["text"] for row in ds]


def test_default_domains_sorted_weight_one(tiny_root: Path) -> None:
    specs = default_domains(str(tiny_root))
    assert [s.name for s in specs] == ["alpha", "beta"]
    assert all(s.weight == 1.0 and s.files is None for s in specs)
    assert [Path(f).name for f in resolve_files(specs[0], str(tiny_root))] == ["a.jsonl", "b.jsonl"]


def test_is_validation_deterministic_and_fraction() -> None:
    keys = [f"doc-{i}" for i in range(4000)]
    first = [is_validation(k, 0.1) for k in keys]
    assert first == [is_validation(k, 0.1) for k in keys]
    assert 0.08 < sum(first) / len(keys) < 0.12
    assert not any(is_validation(k, 0.0) for k in keys)
    assert all(is_validation(k, 1.0) for k in keys)
    assert [is_validation(k, 0.1, salt="other") for k in keys] != first


@pytest.mark.parametrize("domain", ["alpha", "beta"])
def test_splits_disjoint_cover_all_and_deterministic(tiny_root, tiny_docs, tmp_path, domain) -> None:
    spec = DomainSpec(domain)
    kwargs = {"data_root": str(tiny_root), "val_fraction": 0.2, "cache_dir": str(tmp_path)}
    train = _texts(load_domain_texts(spec, "train", **kwargs))
    val = _texts(load_domain_texts(spec, "validation", **kwargs))
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(d["text"] for d in tiny_docs[domain])
    assert 0 < len(val) < len(train)
    assert _texts(load_domain_texts(spec, "validation", **kwargs)) == val
    # The split follows the doc id when there is one, else the text.
    key = "id" if domain == "alpha" else "text"
    assert val == [d["text"] for d in tiny_docs[domain] if is_validation(d[key], 0.2)]


def test_max_docs_keeps_first_docs_and_single_text_column(tiny_root, tmp_path) -> None:
    kwargs = {"data_root": str(tiny_root), "val_fraction": 0.2, "cache_dir": str(tmp_path)}
    full = load_domain_texts(DomainSpec("alpha"), "train", **kwargs)
    capped = load_domain_texts(DomainSpec("alpha"), "train", max_docs=7, **kwargs)
    assert isinstance(capped, datasets.Dataset)
    assert capped.column_names == ["text"]
    assert _texts(capped) == _texts(full)[:7]


def test_streaming_matches_map_style(tiny_root, tmp_path) -> None:
    kwargs = {"data_root": str(tiny_root), "val_fraction": 0.2}
    stream = load_domain_texts(DomainSpec("beta"), "train", streaming=True, max_docs=10, **kwargs)
    assert isinstance(stream, datasets.IterableDataset)
    mapped = load_domain_texts(DomainSpec("beta"), "train", max_docs=10, cache_dir=str(tmp_path), **kwargs)
    assert _texts(stream) == _texts(mapped)


def test_custom_text_field_and_absolute_pattern(tmp_path, write_jsonl) -> None:
    write_jsonl(tmp_path / "src" / "d.jsonl", [{"body": f"text {i}", "id": str(i)} for i in range(30)])
    spec = DomainSpec("custom", files=[str(tmp_path / "src" / "*.jsonl")], text_field="body")
    ds = load_domain_texts(spec, "train", val_fraction=0.0, data_root="/nonexistent", cache_dir=str(tmp_path / "c"))
    assert ds.column_names == ["text"]
    assert _texts(ds) == [f"text {i}" for i in range(30)]


def test_missing_domain_files_clear_error(tiny_root) -> None:
    with pytest.raises(DataRootError, match=r"domain 'gamma'.*corpus/gamma/\*\.jsonl.*XPERT_DATA_ROOT"):
        load_domain_texts(DomainSpec("gamma"), "train", data_root=str(tiny_root))


def test_missing_data_root_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataRootError, match=DATA_ROOT_ENV):
        default_domains()
    with pytest.raises(DataRootError, match=DATA_ROOT_ENV):
        load_domain_texts(DomainSpec("alpha"), "train")


def test_empty_split_raises(tiny_root, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"domain 'alpha'.*validation split is empty"):
        load_domain_texts(
            DomainSpec("alpha"), "validation", data_root=str(tiny_root), val_fraction=0.0, cache_dir=str(tmp_path)
        )


def test_real_corpus_domains_split(tmp_path) -> None:
    try:
        root = data_root()
    except DataRootError:
        pytest.skip("no shared data root on this machine")
    specs = default_domains(str(root))
    assert {"code", "wikipedia"} <= {s.name for s in specs}
    val = load_domain_texts(DomainSpec("wikipedia"), "validation", data_root=str(root), max_docs=5, streaming=True)
    train = load_domain_texts(DomainSpec("wikipedia"), "train", data_root=str(root), max_docs=5, streaming=True)
    val_texts, train_texts = _texts(val), _texts(train)
    assert len(val_texts) == len(train_texts) == 5
    assert set(val_texts).isdisjoint(train_texts)
