"""A unigram model of the train split, scored on the validation blocks the models are scored on: the floor any
language model must beat, and what a source's validation loss is read against."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from xpert_pl.data.pretrain import PretrainDataModule


def token_counts(blocks, vocab_size: int) -> np.ndarray:
    """How often each token id occurs in `blocks` (rows with `input_ids`), as int64 of length `vocab_size`."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for batch in blocks.iter(batch_size=1024):
        ids = np.asarray(batch["input_ids"], dtype=np.int64).ravel()
        counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
    return counts


def unigram_losses(data: PretrainDataModule, smoothing: float = 1.0) -> dict[str, float]:
    """Cross-entropy (nats/token) of the add-`smoothing` unigram model of every domain's train blocks, on each
    domain's validation blocks (the predicted positions: all but each block's first token, as the models'
    `val/loss/<domain>`), and token-weighted over all domains (`all`, as `val/loss`)."""
    vocab = data.vocab_size
    train = sum(token_counts(data.train_blocks(name), vocab) for name in data.domain_names)
    log_p = np.log(train + smoothing) - math.log(float(train.sum()) + smoothing * vocab)
    losses, total_nll, total_tokens = {}, 0.0, 0
    for name in data.domain_names:
        nll, tokens = 0.0, 0
        for batch in data.val_dataset(name).iter(batch_size=1024):
            targets = np.asarray(batch["input_ids"], dtype=np.int64)[:, 1:]
            nll -= float(log_p[targets].sum())
            tokens += targets.size
        losses[name] = nll / max(tokens, 1)
        total_nll, total_tokens = total_nll + nll, total_tokens + tokens
    losses["all"] = total_nll / max(total_tokens, 1)
    return losses
