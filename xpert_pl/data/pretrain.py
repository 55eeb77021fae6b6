"""Pre-training data: tokenise each corpus domain, pack into fixed-length blocks (cached Arrow), mix by weight."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

from xpert_pl.artifacts import read_json, write_json
from xpert_pl.data.corpus import DomainSpec, Split, default_domains, load_domain_texts, resolve_files
from xpert_pl.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

# Bump when tokenisation or packing changes, so stale caches are never reused.
_CACHE_VERSION = 1
_PACK_BATCH = 1024


def _tokenize(batch: dict[str, list[str]], tokenizer: Any, eos_id: int) -> dict[str, list[list[int]]]:
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"input_ids": [[*seq, eos_id] for seq in ids]}


class _CarryPacker:
    """Concatenates token sequences and cuts `block_size` blocks, carrying the tail over to the next batch.

    The carry makes the blocks an exact chunking of the whole document stream (only the final tail is dropped); it
    relies on a single-process `Dataset.map`, which visits batches in order.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.carry: list[int] = []

    def __call__(self, batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        flat = self.carry + [t for seq in batch["input_ids"] for t in seq]
        n_full = len(flat) // self.block_size * self.block_size
        self.carry = flat[n_full:]
        return {"input_ids": [flat[i : i + self.block_size] for i in range(0, n_full, self.block_size)]}


def _pack_batch(batch: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Stateless packing (streaming): each batch drops its own remainder so re-iteration is reproducible."""
    return _CarryPacker(block_size)(batch)


def _collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.stack([torch.as_tensor(np.asarray(r["input_ids"]), dtype=torch.long) for r in rows])}


class PretrainDataModule(L.LightningDataModule):
    """Multi-domain causal-LM pre-training data with cached, packed blocks and one validation loader per domain."""

    def __init__(
        self,
        tokenizer: str = "runs/tokenizer",
        domains: list[DomainSpec] | None = None,
        data_root: str | None = None,
        block_size: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        max_docs_per_domain: int | None = None,
        max_val_blocks_per_domain: int | None = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str = "runs/cache",
        streaming: bool = False,
    ) -> None:
        """Build the data module; the tokenizer is loaded right away.

        Args:
            tokenizer: a local Hugging Face tokenizer directory or a Hub id (`owner/name`); never trained here:
                `xpert tokenizer --out_dir <dir>` trains one on the corpus.
            domains: domains of the mixture; default: every directory of `<data_root>/corpus`, weight 1.
            data_root: data root (default: $XPERT_DATA_ROOT, else ../shared/data).
            block_size: tokens per training sequence (documents are joined with EOS and packed).
            batch_size: sequences per batch.
            val_fraction: fraction of each domain's documents held out for validation (hash of the doc id).
            max_docs_per_domain: use only the first N documents of each domain's split (quick runs).
            max_val_blocks_per_domain: validate on the first N blocks of each domain (None: all).
            seed: seed of the domain mixture and of the shuffling order.
            num_workers: DataLoader worker processes.
            cache_dir: directory of the tokenised/packed Arrow caches.
            streaming: read lazily through `datasets.IterableDataset` (data larger than disk, Hub ids); no cache.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["domains"])
        self.domains = list(domains) if domains is not None else default_domains(data_root)
        if not self.domains:
            raise ValueError("no domains: pass `domains` or put data under <data_root>/corpus/<domain>/*.jsonl")
        names = [d.name for d in self.domains]
        if len(set(names)) != len(names):
            raise ValueError(f"domain names must be unique, got {names}")
        if any(d.weight < 0 for d in self.domains) or sum(d.weight for d in self.domains) <= 0:
            raise ValueError(f"domain weights must be >= 0 with a positive sum, got {[d.weight for d in self.domains]}")
        self.hparams["domains"] = [dataclasses.asdict(d) for d in self.domains]
        self.tokenizer = load_tokenizer(tokenizer)
        self._tokenizer_hash: str | None = None
        self._sources_checked = False
        self._train: datasets.Dataset | datasets.IterableDataset | None = None
        self._val: dict[str, datasets.Dataset | datasets.IterableDataset] | None = None

    @property
    def vocab_size(self) -> int:
        """Number of token ids of the tokenizer (special tokens included)."""
        return len(self.tokenizer)

    @property
    def domain_names(self) -> list[str]:
        """Domain names, in the order of the validation dataloaders."""
        return [d.name for d in self.domains]

    @property
    def eos_id(self) -> int:
        """Id of the end-of-document token appended after every document."""
        return int(self.tokenizer.eos_token_id)

    # ---- caching -------------------------------------------------------------------------------------------------

    def _cache_key(self, spec: DomainSpec, split: Split) -> str:
        if self._tokenizer_hash is None:
            content = self.tokenizer.backend_tokenizer.to_str() + f"|eos={self.eos_id}"
            self._tokenizer_hash = hashlib.sha256(content.encode()).hexdigest()
        if spec.hub_id:
            source: Any = [spec.hub_id, spec.hub_config, spec.hub_split]
        else:
            source = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in resolve_files(spec, self.hparams.data_root)]
        key = {
            "version": _CACHE_VERSION,
            "tokenizer": self._tokenizer_hash,
            "source": source,
            "text_field": spec.text_field,
            "block_size": self.hparams.block_size,
            "split": split,
            "val_fraction": self.hparams.val_fraction,
            "max_docs": self.hparams.max_docs_per_domain,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def _cache_root(self) -> Path:
        return Path(self.hparams.cache_dir)

    def _load_texts(self, spec: DomainSpec, split: Split, streaming: bool) -> Any:
        return load_domain_texts(
            spec,
            split,
            data_root=self.hparams.data_root,
            val_fraction=self.hparams.val_fraction,
            max_docs=self.hparams.max_docs_per_domain,
            streaming=streaming,
            cache_dir=str(self._cache_root / "hf"),
        )

    def _packed(self, spec: DomainSpec, split: Split) -> datasets.Dataset:
        """Packed blocks of one domain's split, built once and then memory-mapped from the Arrow cache."""
        key = self._cache_key(spec, split)
        stem = self._packed_stem(spec, split)
        packed_file, meta_file = stem.with_suffix(".arrow"), stem.with_suffix(".json")
        if packed_file.exists() and meta_file.exists():
            packed = datasets.Dataset.from_file(str(packed_file))
            log.info("%s/%s: %s (cached)", spec.name, split, _describe(read_json(meta_file)))
            return packed
        self.check_sources()
        packed_file.parent.mkdir(parents=True, exist_ok=True)
        texts = self._load_texts(spec, split, streaming=False)
        if isinstance(texts, datasets.IterableDataset):
            texts = _materialise(texts, key, str(self._cache_root / "hf"))
        tokenized = texts.map(
            _tokenize,
            batched=True,
            fn_kwargs={"tokenizer": self.tokenizer, "eos_id": self.eos_id},
            remove_columns=["text"],
            cache_file_name=str(stem) + "-tokens.arrow",
            new_fingerprint=f"{key}-tokens",
            features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
            desc=f"tokenise {spec.name}/{split}",
        )
        packed = tokenized.map(
            _CarryPacker(self.hparams.block_size),
            batched=True,
            batch_size=_PACK_BATCH,
            remove_columns=["input_ids"],
            cache_file_name=str(packed_file),
            new_fingerprint=f"{key}-packed",
            features=_block_features(self.hparams.block_size),
            desc=f"pack {spec.name}/{split}",
        )
        meta = {"docs": len(texts), "blocks": len(packed), "block_size": self.hparams.block_size}
        write_json(meta_file, meta)
        log.info("%s/%s: %s", spec.name, split, _describe(meta))
        return packed

    def _stream(self, spec: DomainSpec, split: Split) -> datasets.IterableDataset:
        texts = self._load_texts(spec, split, streaming=True)
        tok_kwargs = {"tokenizer": self.tokenizer, "eos_id": self.eos_id}
        tokenized = texts.map(_tokenize, batched=True, fn_kwargs=tok_kwargs, remove_columns=["text"])
        return tokenized.map(
            _pack_batch,
            batched=True,
            batch_size=_PACK_BATCH,
            fn_kwargs={"block_size": self.hparams.block_size},
            remove_columns=["input_ids"],
        )

    # ---- Lightning hooks -----------------------------------------------------------------------------------------

    def check_sources(self) -> None:
        """Refuse bad data files before any tokenising: every local domain whose packed cache is missing has its
        files checked line by line (the file, the line and the field are named); cached domains are not re-read."""
        from xpert_pl.data.domain_sets import domain_file_problems
        from xpert_pl.errors import raise_if_problems

        if self._sources_checked or self.hparams.streaming:
            return
        uncached = [s for s in self.domains if not s.hub_id and not self._is_cached(s)]
        raise_if_problems(domain_file_problems(uncached, self.hparams.data_root, contents=True))
        self._sources_checked = True

    def _is_cached(self, spec: DomainSpec) -> bool:
        return all(self._packed_stem(spec, split).with_suffix(".json").is_file() for split in ("train", "validation"))

    def _packed_stem(self, spec: DomainSpec, split: Split) -> Path:
        return self._cache_root / "packed" / f"{spec.name}-{split}-{self._cache_key(spec, split)}"

    def prepare_data(self) -> None:
        """Build the Arrow caches of every domain and split (once per node); assigns no state."""
        if self.hparams.streaming:
            return
        self.check_sources()
        for spec in self.domains:
            for split in ("train", "validation"):
                self._packed(spec, split)

    def setup(self, stage: str | None = None) -> None:
        """Open the cached datasets (idempotent: a second call does nothing)."""
        if stage in (None, "fit"):
            self._ensure_train()
        self._ensure_val()

    def _ensure_val(self) -> dict[str, Any]:
        if self._val is None:
            limit = self.hparams.max_val_blocks_per_domain
            val: dict[str, Any] = {}
            for spec in self.domains:
                if self.hparams.streaming:
                    ds = self._stream(spec, "validation")
                    val[spec.name] = ds.take(limit) if limit is not None else ds
                else:
                    ds = _nonempty(self._packed(spec, "validation"), spec.name, "validation")
                    val[spec.name] = ds.select(range(min(limit, len(ds)))) if limit is not None else ds
            self._val = val
        return self._val

    def _ensure_train(self) -> Any:
        if self._train is None:
            specs = [s for s in self.domains if s.weight > 0]
            total = sum(s.weight for s in specs)
            probs = [s.weight / total for s in specs]
            seed = self.hparams.seed
            if self.hparams.streaming:
                parts = [self._stream(s, "train") for s in specs]
                mixed = datasets.interleave_datasets(parts, probs, seed=seed, stopping_strategy="all_exhausted")
                self._train = mixed.shuffle(seed=seed, buffer_size=1000)
            else:
                parts = [_nonempty(self._packed(s, "train"), s.name, "train") for s in specs]
                mixed = datasets.interleave_datasets(parts, probs, seed=seed, stopping_strategy="all_exhausted")
                self._train = mixed.with_format("numpy")
        return self._train

    def train_dataset(self) -> datasets.Dataset | datasets.IterableDataset:
        """The mixed training blocks (before the DataLoader's shuffling)."""
        return self._ensure_train()

    def train_blocks(self, domain: str) -> datasets.Dataset:
        """Packed training blocks of one domain, unmixed and unshuffled (e.g. to count tokens)."""
        specs = {s.name: s for s in self.domains}
        if domain not in specs:
            raise KeyError(f"unknown domain '{domain}'; known: {self.domain_names}")
        return _nonempty(self._packed(specs[domain], "train"), domain, "train")

    def val_dataset(self, domain: str) -> datasets.Dataset | datasets.IterableDataset:
        """Packed validation blocks of one domain (the first `max_val_blocks_per_domain`)."""
        val = self._ensure_val()
        if domain not in val:
            raise KeyError(f"unknown domain '{domain}'; known: {self.domain_names}")
        return val[domain]

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) batches `{"input_ids": LongTensor[B, block_size]}` from the weighted mixture.

        The order is a function of `seed` alone: one process draws `randperm(n)` from a generator seeded with it,
        and under DDP each rank takes its stride of that same permutation (a DistributedSampler with the same
        seed), so N processes at batch B/N see exactly the single process's global batches.
        """
        ds = self._ensure_train()
        if self.hparams.streaming:
            return self._loader(ds, drop_last=True)
        seed = self.hparams.seed
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            sampler: Sampler = DistributedSampler(ds, trainer.world_size, trainer.global_rank, shuffle=True, seed=seed)
        else:
            # torchdata's RandomSampler: the same permutations as torch's, plus its generator in the loader state.
            sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
        return self._loader(ds, drop_last=True, sampler=sampler)

    def val_dataloader(self) -> list[DataLoader]:
        """One unshuffled loader per domain, in `domain_names` order."""
        val = self._ensure_val()
        return [self._loader(val[name].with_format("numpy"), drop_last=False) for name in self.domain_names]

    def _loader(self, ds: Any, drop_last: bool, **kwargs: Any) -> DataLoader:
        workers = self.hparams.num_workers
        # A StatefulDataLoader: Lightning checkpoints its position, so a resumed run continues the data order
        # where it stopped instead of replaying the epoch from its start.
        return StatefulDataLoader(
            ds,
            batch_size=self.hparams.batch_size,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=_collate,
            **kwargs,
        )


def _block_features(block_size: int) -> datasets.Features:
    return datasets.Features({"input_ids": datasets.List(datasets.Value("int32"), length=block_size)})


def _describe(meta: dict[str, Any]) -> str:
    return f"{meta['docs']} docs -> {meta['blocks']} blocks of {meta['block_size']} tokens"


def _nonempty(ds: datasets.Dataset, name: str, split: str) -> datasets.Dataset:
    if len(ds) == 0:
        raise ValueError(f"domain '{name}': the {split} split has fewer tokens than one block; lower block_size")
    return ds


def _hub_rows(hub: datasets.IterableDataset) -> Any:
    yield from hub


def _materialise(texts: datasets.IterableDataset, key: str, cache_dir: str) -> datasets.Dataset:
    """Write a streamed (Hub) domain to Arrow once, so the map-style pipeline can cache and shuffle it."""
    return datasets.Dataset.from_generator(
        _hub_rows,
        gen_kwargs={"hub": texts},
        features=datasets.Features({"text": datasets.Value("string")}),
        cache_dir=cache_dir,
        fingerprint=f"{key}-texts",
    )
