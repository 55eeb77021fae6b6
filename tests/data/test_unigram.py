"""The unigram floor: an add-one unigram model of the train blocks, scored on the validation targets."""

from __future__ import annotations

import math
from collections import Counter

from xpert_pl.data import PretrainDataModule
from xpert_pl.data.unigram import unigram_losses


def test_unigram_losses_equal_a_direct_count(tiny_data_root, tiny_tokenizer_dir, tmp_path):
    data = PretrainDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        data_root=str(tiny_data_root),
        cache_dir=str(tmp_path),
        block_size=32,
        max_val_blocks_per_domain=5,
    )
    data.setup("validate")
    counts = Counter(t for d in data.domain_names for row in data.train_blocks(d) for t in row["input_ids"])
    total, vocab = sum(counts.values()), data.vocab_size
    expected, nll_all, n_all = {}, 0.0, 0
    for domain in data.domain_names:
        targets = [t for row in data.val_dataset(domain) for t in list(row["input_ids"])[1:]]
        nll = -sum(math.log((counts[t] + 1) / (total + vocab)) for t in targets)
        expected[domain] = nll / len(targets)
        nll_all, n_all = nll_all + nll, n_all + len(targets)
    expected["all"] = nll_all / n_all
    losses = unigram_losses(data)
    assert losses.keys() == expected.keys() == {"code", "law", "news", "all"}
    for key, value in expected.items():
        assert math.isclose(losses[key], value, rel_tol=1e-9), key
    assert 0 < losses["all"] < math.log(vocab)  # better than a uniform guess over the vocabulary
