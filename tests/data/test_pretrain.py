"""PretrainDataModule: exact packing, cached Arrow files, seeded mixing and shuffling, streaming mode."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

import xpert_pl.data.pretrain as pretrain
from xpert_pl.data import DomainSpec, PretrainDataModule
from xpert_pl.data.corpus import is_validation
from xpert_pl.paths import DataRootError, data_root
from xpert_pl.tokenizer import EOS_TOKEN, load_tokenizer

BLOCK = 16


@pytest.fixture
def make_dm(tiny_root: Path, tiny_tokenizer: Path, tmp_path: Path):
    """Factory of data modules over the tiny corpus, sharing one cache directory per test."""

    def make(**overrides) -> PretrainDataModule:
        kwargs = {
            "tokenizer": str(tiny_tokenizer),
            "data_root": str(tiny_root),
            "block_size": BLOCK,
            "batch_size": 4,
            "val_fraction": 0.2,
            "max_val_blocks_per_domain": None,
            "cache_dir": str(tmp_path / "cache"),
        }
        kwargs.update(overrides)
        return PretrainDataModule(**kwargs)

    return make


def _flat(ds) -> list[int]:
    return [t for row in ds.with_format(None) for t in row["input_ids"]]


def _cache_files(cache: Path) -> set[Path]:
    return {p for p in cache.rglob("*") if p.is_file()}


def test_construction_exposes_tokenizer_and_domains(make_dm, tiny_tokenizer) -> None:
    dm = make_dm()
    assert dm.vocab_size == len(load_tokenizer(tiny_tokenizer)) <= 512
    assert dm.domain_names == ["alpha", "beta"]
    assert dm.hparams.block_size == BLOCK and dm.hparams.domains[0]["name"] == "alpha"


@pytest.mark.parametrize("split", ["train", "validation"])
def test_packed_blocks_are_exact_document_stream(make_dm, tiny_docs, monkeypatch, split) -> None:
    # A small packing batch makes the carry-over between batches matter.
    monkeypatch.setattr(pretrain, "_PACK_BATCH", 7)
    dm = make_dm()
    packed = dm._packed(DomainSpec("alpha"), split)
    want_val = split == "validation"
    docs = [d["text"] for d in tiny_docs["alpha"] if is_validation(d["id"], 0.2) == want_val]
    expected = [t for text in docs for t in [*dm.tokenizer(text, add_special_tokens=False)["input_ids"], dm.eos_id]]
    flat = _flat(packed)
    assert len(packed) == len(expected) // BLOCK > 0
    assert flat == expected[: len(flat)]
    stream_text = "".join(text + EOS_TOKEN for text in docs)
    decoded = dm.tokenizer.decode(flat)
    assert decoded + dm.tokenizer.decode(expected[len(flat) :]) == stream_text
    assert len(expected) - len(flat) < BLOCK


def test_setup_idempotent_and_prepare_assigns_no_state(make_dm) -> None:
    dm = make_dm()
    dm.prepare_data()
    assert dm._train is None and dm._val is None
    dm.setup("fit")
    train, val = dm._train, dm._val
    dm.setup("fit")
    assert dm._train is train and dm._val is val


def test_batches_are_long_blocks_and_seeded(make_dm) -> None:
    def first_batches(seed: int) -> list[torch.Tensor]:
        dm = make_dm(seed=seed)
        dm.prepare_data()
        dm.setup("fit")
        return [b["input_ids"] for b in itertools.islice(dm.train_dataloader(), 3)]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert a[0].shape == (4, BLOCK) and a[0].dtype == torch.long
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_train_loader_resumes_its_position(make_dm) -> None:
    """The loader's state (as Lightning checkpoints it) continues the order across epochs, not from its start."""

    def loader():
        dm = make_dm(seed=3)
        dm.prepare_data()
        dm.setup("fit")
        return dm.train_dataloader()

    full = loader()
    per_epoch = len(full)
    reference = [b["input_ids"] for epoch in range(2) for b in full]
    interrupted = loader()
    assert len(list(interrupted)) == per_epoch  # the first epoch
    second = iter(interrupted)
    next(second), next(second)  # two batches into the second epoch, then the run dies
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [b["input_ids"] for b in resumed]
    assert per_epoch >= 3 and len(rest) == per_epoch - 2
    assert all(torch.equal(x, y) for x, y in zip(rest, reference[per_epoch + 2 :], strict=True))


def _mixture_ratio(dm: PretrainDataModule) -> float:
    dm.setup("fit")
    alpha = {tuple(r["input_ids"]) for r in dm._packed(DomainSpec("alpha"), "train").with_format(None)}
    rows = [tuple(r["input_ids"]) for r in dm.train_dataset().with_format(None)]
    n_alpha = sum(r in alpha for r in rows)
    return n_alpha / (len(rows) - n_alpha)


def test_domain_weights_set_mixture_proportions(make_dm) -> None:
    weighted = make_dm(domains=[DomainSpec("alpha", weight=3.0), DomainSpec("beta", weight=1.0)])
    equal = make_dm(domains=[DomainSpec("alpha"), DomainSpec("beta")])
    assert 2.4 < _mixture_ratio(weighted) < 3.6
    assert 0.75 < _mixture_ratio(equal) < 1.33


def test_val_dataloaders_one_per_domain_first_blocks(make_dm) -> None:
    dm = make_dm(max_val_blocks_per_domain=3)
    dm.setup("validate")
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    for name, loader in zip(dm.domain_names, loaders, strict=True):
        blocks = torch.cat([b["input_ids"] for b in loader])
        assert blocks.shape == (3, BLOCK) and blocks.dtype == torch.long
        full = dm._packed(DomainSpec(name), "validation")
        assert blocks.tolist() == [r["input_ids"] for r in full.with_format(None).select(range(3))]
        assert len(dm.val_dataset(name)) == 3
    with pytest.raises(KeyError, match="gamma"):
        dm.val_dataset("gamma")


def test_second_run_reuses_cache_and_changes_invalidate(make_dm, tmp_path, monkeypatch) -> None:
    first = make_dm()
    first.prepare_data()
    first.setup("fit")
    cache = tmp_path / "cache"
    files = _cache_files(cache)
    assert len([f for f in files if f.suffix == ".arrow" and "packed" in f.parts]) >= 4

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the tokenizer ran although the cache was valid")

    monkeypatch.setattr(pretrain, "_tokenize", no_tokenizing)
    second = make_dm()
    second.prepare_data()
    second.setup("fit")
    assert _cache_files(cache) == files
    assert _flat(second.train_dataset()) == _flat(first.train_dataset())
    monkeypatch.undo()
    make_dm(block_size=BLOCK * 2).prepare_data()
    assert len(_cache_files(cache)) > len(files)


def test_missing_data_root_and_domain_files(make_dm, tmp_path) -> None:
    with pytest.raises(DataRootError, match="XPERT_DATA_ROOT"):
        make_dm(data_root=str(tmp_path / "nowhere"))
    dm = make_dm(domains=[DomainSpec("gamma")])
    with pytest.raises(DataRootError, match=r"domain 'gamma'.*corpus/gamma"):
        dm.prepare_data()


def test_block_larger_than_validation_split_raises(make_dm) -> None:
    dm = make_dm(block_size=100_000)
    with pytest.raises(ValueError, match=r"domain 'alpha'.*fewer tokens than one block"):
        dm.setup("validate")


def test_streaming_yields_blocks(make_dm) -> None:
    dm = make_dm(streaming=True, max_val_blocks_per_domain=5, seed=3)
    dm.prepare_data()
    dm.setup("fit")
    batches = [b["input_ids"] for b in itertools.islice(dm.train_dataloader(), 5)]
    assert len(batches) == 5
    assert all(b.shape == (4, BLOCK) and b.dtype == torch.long for b in batches)
    assert all(int(b.max()) < dm.vocab_size for b in batches)
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    for loader in loaders:
        blocks = torch.cat([b["input_ids"] for b in loader])
        assert blocks.shape == (5, BLOCK)
    # Re-iterating validation gives the same blocks.
    again = torch.cat([b["input_ids"] for b in dm.val_dataloader()[0]])
    assert torch.equal(again, torch.cat([b["input_ids"] for b in loaders[0]]))


def test_real_corpus_small(tiny_tokenizer, tmp_path) -> None:
    try:
        root = data_root()
    except DataRootError:
        pytest.skip("no shared data root on this machine")
    dm = PretrainDataModule(
        tokenizer=str(tiny_tokenizer),
        data_root=str(root),
        domains=[DomainSpec("wikipedia"), DomainSpec("medicine", weight=2.0)],
        block_size=64,
        batch_size=8,
        max_docs_per_domain=4,
        max_val_blocks_per_domain=8,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 64)
    assert [len(dm.val_dataset(n)) for n in dm.domain_names] == [8, 8]
    text = dm.tokenizer.decode(dm.val_dataset("medicine")[0]["input_ids"])
    assert len(text) > 64
