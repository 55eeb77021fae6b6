"""Supervised fine-tuning data: the SFT data module (response-only loss, EOS, batching).

A source (`DollyInstructions`, `SuperNIInstructions`, `JsonlInstructions`, chosen by `class_path`; see
`xpert_pl.data.instruction_sources`) yields named splits of `InstructionExample`s; `SFTDataModule` turns them into
batches `{input_ids, attention_mask, labels}` with labels -100 on prompt and padding tokens. The length rule is in
`xpert_pl.data.sft_encoding`.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from xpert_pl.data.instruction_sources import InstructionSource, InstructionSplits
from xpert_pl.data.prompts import InstructionExample
from xpert_pl.data.sft_encoding import (
    LongPrompt,
    collate_rows,
    concat_rows,
    encode_examples,
    length_bucketed_batches,
    pack_examples,
)
from xpert_pl.errors import raise_if_problems
from xpert_pl.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

Rows = list[tuple[list[int], list[int]]]


class _Batches(Dataset):
    """Pre-grouped batches: item i is batch i, collated (the sampler then shuffles whole batches)."""

    def __init__(self, rows: Rows, batches: list[list[int]], pad_id: int, pad_to: int | None = None):
        self.rows, self.batches, self.pad_id, self.pad_to = rows, batches, pad_id, pad_to

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return collate_rows([self.rows[i] for i in self.batches[index]], self.pad_id, self.pad_to)


class SFTDataModule(L.LightningDataModule):
    """Instruction tuning: loss on response tokens only, EOS appended, length-bucketed (or packed) batches."""

    def __init__(
        self,
        source: InstructionSource | None = None,
        tokenizer: str = "runs/tokenizer",
        data_root: str | None = None,
        max_length: int = 512,
        max_prompt_length: int | None = 256,
        long_prompt: LongPrompt = "truncate",
        batch_size: int = 8,
        packing: bool = False,
        bucket_window: int = 32,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        """Build the data module; the tokenizer is loaded right away, the data at `setup`.

        Args:
            source: the examples (default `DollyInstructions()`); e.g. `xpert_pl.data.SuperNIInstructions`.
            tokenizer: the pre-trained student's tokenizer: a local directory or a Hub id (`owner/name`).
            data_root: data root (default: $XPERT_DATA_ROOT, else ../shared/data).
            max_length: most tokens of prompt + response (MiniLLM: 512).
            max_prompt_length: most prompt tokens (MiniLLM: 256); None: only `max_length` limits prompts.
            long_prompt: a prompt over its budget is "truncate"d in the middle (counted) or "drop"ped (MiniLLM).
            batch_size: sequences per batch.
            packing: pack several examples per `max_length` block, each keeping its own label mask; attention
                then crosses example boundaries within a block (the model gets no per-example positions or mask),
                which is cheap and common but not exact. Validation and test never pack.
            bucket_window: length bucketing: shuffled examples are sorted by length `bucket_window * batch_size`
                at a time, so batches hold similar lengths; 1 gives plain random batches.
            max_train_examples: use only the first N training examples (quick runs).
            max_eval_examples: use only the first N examples of each validation and test set.
            seed: seed of packing, bucketing and the order of batches.
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["source"])
        raise_if_problems(_settings_problems(max_length, max_prompt_length, long_prompt, batch_size, bucket_window))
        self.source = source if source is not None else _default_source()
        self.hparams["source"] = self.source.describe()
        self.tokenizer = load_tokenizer(tokenizer)
        self._splits: InstructionSplits | None = None
        self._encoded: dict[str, Rows] = {}
        self._stats: dict[str, dict[str, int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of token ids of the tokenizer (special tokens included)."""
        return len(self.tokenizer)

    @property
    def domain_names(self) -> list[str]:
        """Validation set names, in the order of the validation dataloaders (`val/loss/<name>`)."""
        return list(self.source.validation_names)

    @property
    def test_names(self) -> list[str]:
        """Test set names, in the order of the test dataloaders."""
        return list(self.source.test_names)

    @property
    def eos_id(self) -> int:
        """Id of the token appended to every response (and trained on)."""
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        """Id written on padding positions (never attended to, never in the loss)."""
        return int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id)

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """Counts per split encoded so far (examples, kept, intact, truncated_prompt, dropped_long_prompt,
        dropped_long_response) and, under `source`, what the source selected (e.g. SuperNI tasks)."""
        return {**self._stats, "source": self.source.report()} if self._splits is not None else dict(self._stats)

    # ---- loading and encoding ------------------------------------------------------------------------------------

    def _ensure_splits(self) -> InstructionSplits:
        if self._splits is None:
            self._splits = self.source.load(self.hparams.data_root)
            report = self.source.report()
            if report:
                log.info("%s: %s", type(self.source).__name__, report)
        return self._splits

    def _examples(self, split: str) -> list[InstructionExample]:
        splits = self._ensure_splits()
        if split == "train":
            cap = self.hparams.max_train_examples
            return splits.train[:cap] if cap is not None else splits.train
        sets = {**splits.validation, **splits.test}
        if split not in sets:
            raise KeyError(f"unknown split '{split}'; known: {['train', *sets]}")
        cap = self.hparams.max_eval_examples
        return sets[split][:cap] if cap is not None else sets[split]

    def encoded(self, split: str) -> Rows:
        """`(input_ids, labels)` of the kept examples of a split ("train" or a validation/test set name)."""
        if split not in self._encoded:
            hp = self.hparams
            rows, counts = encode_examples(
                self._examples(split), self.tokenizer, hp.max_length, hp.max_prompt_length, hp.long_prompt
            )
            if not rows:
                raise ValueError(f"SFT split '{split}' has no example left after the length rule: {counts}")
            self._encoded[split], self._stats[split] = rows, counts
            log.info("sft %s: %s", split, _describe_counts(counts, hp.max_length))
        return self._encoded[split]

    # ---- Lightning hooks -----------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Read and encode the splits the stage needs (idempotent)."""
        if stage in (None, "fit"):
            self.encoded("train")
        if stage in (None, "fit", "validate"):
            for name in self.domain_names:
                self.encoded(name)
        if stage in (None, "test"):
            for name in self.test_names:
                self.encoded(name)

    def train_batches(self) -> _Batches:
        """The training batches (packed or length-bucketed, fixed by `seed`), before the sampler's shuffling."""
        hp = self.hparams
        rows = self.encoded("train")
        generator = torch.Generator().manual_seed(hp.seed)
        if hp.packing:
            blocks = pack_examples([len(ids) for ids, _ in rows], hp.max_length, generator)
            rows = [concat_rows([rows[i] for i in block]) for block in blocks]
        batches = length_bucketed_batches([len(ids) for ids, _ in rows], hp.batch_size, hp.bucket_window, generator)
        return _Batches(rows, batches, self.pad_id, hp.max_length if hp.packing else None)

    def train_dataloader(self) -> DataLoader:
        """Batches `{input_ids, attention_mask, labels}` in a seeded random order.

        The order is a function of `seed` alone; under DDP each rank takes its stride of the same permutation of
        batches (a DistributedSampler with the same seed), as `PretrainDataModule` does.
        """
        ds = self.train_batches()
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            seed = self.hparams.seed
            sampler: Sampler = DistributedSampler(ds, trainer.world_size, trainer.global_rank, shuffle=True, seed=seed)
        else:
            sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(self.hparams.seed))
        return self._loader(ds, sampler=sampler)

    def _eval_loader(self, name: str) -> DataLoader:
        rows = self.encoded(name)
        batches = length_bucketed_batches([len(ids) for ids, _ in rows], self.hparams.batch_size, 1)
        return self._loader(_Batches(rows, batches, self.pad_id))

    def val_dataloader(self) -> list[DataLoader]:
        """One unshuffled, unpacked loader per validation set, in `domain_names` order."""
        return [self._eval_loader(name) for name in self.domain_names]

    def test_dataloader(self) -> list[DataLoader]:
        """One unshuffled, unpacked loader per test set, in `test_names` order."""
        return [self._eval_loader(name) for name in self.test_names]

    def _loader(self, ds: Dataset, sampler: Sampler | None = None) -> DataLoader:
        workers = self.hparams.num_workers
        # batch_size=None: every dataset item already is a collated batch.
        return DataLoader(ds, batch_size=None, sampler=sampler, num_workers=workers, persistent_workers=workers > 0)


def _default_source() -> InstructionSource:
    from xpert_pl.data.dolly import DollyInstructions

    return DollyInstructions()


def _settings_problems(
    max_length: int, max_prompt_length: int | None, long_prompt: str, batch_size: int, bucket_window: int
) -> list[str]:
    problems = []
    if max_length < 2:
        problems.append(f"max_length must be >= 2 (a prompt token and EOS), got {max_length}")
    if max_prompt_length is not None and max_prompt_length < 1:
        problems.append(f"max_prompt_length must be >= 1 or null, got {max_prompt_length}")
    if long_prompt not in ("truncate", "drop"):
        problems.append(f"long_prompt must be 'truncate' or 'drop', got {long_prompt!r}")
    if batch_size < 1 or bucket_window < 1:
        problems.append(f"batch_size and bucket_window must be >= 1, got {batch_size} and {bucket_window}")
    return problems


def _describe_counts(counts: dict[str, int], max_length: int) -> str:
    dropped = counts["dropped_long_prompt"] + counts["dropped_long_response"]
    return (
        f"{counts['examples']} examples -> {counts['kept']} kept "
        f"({counts['truncated_prompt']} prompts truncated in the middle; {dropped} dropped: "
        f"{counts['dropped_long_response']} responses of >= {max_length} tokens, "
        f"{counts['dropped_long_prompt']} long prompts)"
    )
