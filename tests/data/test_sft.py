"""SFT encoding and data module: response-only labels, EOS, the length rule and its counts, bucketing, packing."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import lightning as L
import pytest
import torch

from xpert_pl.data import InstructionExample, JsonlInstructions, SFTDataModule, alpaca_prompt
from xpert_pl.data.sft_encoding import (
    IGNORE_INDEX,
    collate_rows,
    concat_rows,
    encode_examples,
    fit_example,
    length_bucketed_batches,
    pack_examples,
    truncate_middle,
)
from xpert_pl.tokenizer import EOS_TOKEN, load_tokenizer, train_bpe_tokenizer

M = IGNORE_INDEX
WORDS = ["court", "statute", "appeal", "judge", "def", "return", "class", "yield", "lambda", "import"]


def _rows(n: int, seed: int) -> list[dict]:
    """Instruction rows whose response is the input's words reversed: learnable and of varied length."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
        row = {"instruction": "Reverse the words.", "context": " ".join(words), "response": " ".join(words[::-1])}
        rows.append(row if i % 3 else {"instruction": "Say the word.", "context": "", "response": words[0]})
    return rows


@pytest.fixture(scope="module")
def sft_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BPE trained on the template and the toy rows (each word one token): a prompt is 34-61 tokens, not ~150."""
    texts = [alpaca_prompt(r["instruction"], r["context"]) + r["response"] for r in _rows(300, seed=9)]
    path = tmp_path_factory.mktemp("sft_tok") / "tok"
    train_bpe_tokenizer(texts, path, vocab_size=1000)
    return path


def test_fit_example_masks_the_prompt_token_by_token():
    pair, outcome = fit_example([11, 12, 13], [21, 22, 0], max_length=16)
    assert outcome == "intact"
    assert pair == ([11, 12, 13, 21, 22, 0], [M, M, M, 21, 22, 0])


def test_fit_example_cuts_the_prompt_middle_never_the_response():
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    # budget = 8 - 3 = 5 prompt tokens: the first 3 and the last 2.
    pair, outcome = fit_example(prompt, [21, 22, 0], max_length=8)
    assert outcome == "truncated_prompt"
    assert pair == ([1, 2, 3, 7, 8, 21, 22, 0], [M, M, M, M, M, 21, 22, 0])
    # max_prompt_length binds before max_length does.
    pair, outcome = fit_example(prompt, [21, 0], max_length=32, max_prompt_length=4)
    assert outcome == "truncated_prompt" and pair[0] == [1, 2, 7, 8, 21, 0]
    assert fit_example(prompt, [21, 0], max_length=32, max_prompt_length=4, long_prompt="drop") == (
        None,
        "dropped_long_prompt",
    )
    # The response alone fills max_length: dropped, not cut.
    assert fit_example([1], [21, 22, 23, 0], max_length=4) == (None, "dropped_long_response")
    assert fit_example([1, 2], [21, 22, 0], max_length=4)[0] == ([1, 21, 22, 0], [M, 21, 22, 0])


def test_truncate_middle_keeps_head_and_tail():
    assert truncate_middle(list(range(10)), 10) == list(range(10))
    assert truncate_middle(list(range(10)), 5) == [0, 1, 2, 8, 9]
    assert truncate_middle(list(range(10)), 1) == [0]


def test_encode_examples_labels_response_and_eos_only(sft_tokenizer):
    tok = load_tokenizer(sft_tokenizer)
    example = InstructionExample("Name the court.", "the judge held", "the court ruling")
    (pair,), counts = encode_examples([example], tok, max_length=512)
    prompt_ids = tok(alpaca_prompt("Name the court.", "the judge held"), add_special_tokens=False)["input_ids"]
    response_ids = tok("the court ruling", add_special_tokens=False)["input_ids"]
    input_ids, labels = pair
    assert input_ids == [*prompt_ids, *response_ids, tok.eos_token_id]
    assert labels == [M] * len(prompt_ids) + [*response_ids, tok.eos_token_id]
    assert tok.decode(input_ids) == example.prompt + "the court ruling" + EOS_TOKEN
    assert counts == {
        "examples": 1,
        "kept": 1,
        "intact": 1,
        "truncated_prompt": 0,
        "dropped_long_prompt": 0,
        "dropped_long_response": 0,
    }


def test_encode_examples_counts_each_outcome(sft_tokenizer):
    tok = load_tokenizer(sft_tokenizer)
    short = InstructionExample("Say it.", "", "court")
    long_input = InstructionExample("Say it.", " ".join(["statute"] * 300), "court")
    long_response = InstructionExample("Say it.", "", " ".join(["appeal"] * 300))
    rows, counts = encode_examples([short, long_input, long_response, short], tok, max_length=128)
    assert counts == {
        "examples": 4,
        "kept": 3,
        "intact": 2,
        "truncated_prompt": 1,
        "dropped_long_prompt": 0,
        "dropped_long_response": 1,
    }
    assert [len(ids) for ids, _ in rows][1] == 128  # the truncated prompt fills the budget exactly
    assert rows[1][1][-2:] == [*tok("court", add_special_tokens=False)["input_ids"][-1:], tok.eos_token_id]
    _, dropped = encode_examples([long_input], tok, max_length=128, long_prompt="drop")
    assert dropped["dropped_long_prompt"] == 1 and dropped["kept"] == 0


def test_collate_pads_right_with_ignored_labels():
    batch = collate_rows([([5, 6, 7], [M, 6, 7]), ([8], [8])], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["labels"].tolist() == [[M, 6, 7], [8, M, M]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert collate_rows([([5], [5])], pad_id=1, pad_to=4)["input_ids"].tolist() == [[5, 1, 1, 1]]


def test_length_buckets_cover_every_index_once_and_are_seeded():
    lengths = [random.Random(i).randint(1, 100) for i in range(103)]
    batches = length_bucketed_batches(lengths, 4, 5, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert [len(b) for b in batches] == [4] * 25 + [3]  # windows of 20 indices: 5 full ones and a last of 3
    for start in range(0, len(batches), 5):  # within a window of 5 batches, lengths only decrease
        window = [lengths[i] for b in batches[start : start + 5] for i in b]
        assert window == sorted(window, reverse=True)
    assert batches == length_bucketed_batches(lengths, 4, 5, torch.Generator().manual_seed(0))
    assert batches != length_bucketed_batches(lengths, 4, 5, torch.Generator().manual_seed(1))
    evaluation = length_bucketed_batches(lengths, 4, 1)
    assert [lengths[i] for b in evaluation for i in b] == sorted(lengths, reverse=True)


def test_packing_fills_blocks_in_seeded_order():
    lengths = [3, 5, 2, 7, 4, 1, 6]
    blocks = pack_examples(lengths, 8, torch.Generator().manual_seed(0))
    order = torch.randperm(7, generator=torch.Generator().manual_seed(0)).tolist()
    assert [i for b in blocks for i in b] == order
    assert all(sum(lengths[i] for i in b) <= 8 for b in blocks)
    # greedy: no block could have taken the next block's first example
    assert all(sum(lengths[i] for i in a) + lengths[b[0]] > 8 for a, b in itertools.pairwise(blocks))
    assert concat_rows([([1, 2], [M, 2]), ([3, 4, 0], [M, 4, 0])]) == ([1, 2, 3, 4, 0], [M, 2, M, 4, 0])


# ---- the data module -------------------------------------------------------------------------------------------


@pytest.fixture
def sft_root(tmp_path: Path, write_jsonl) -> Path:
    write_jsonl(tmp_path / "sft" / "toy" / "train.jsonl", _rows(96, seed=0))
    write_jsonl(tmp_path / "sft" / "toy" / "dev.jsonl", _rows(24, seed=1))
    write_jsonl(tmp_path / "sft" / "toy" / "other.jsonl", _rows(8, seed=2))
    return tmp_path


def _dm(root: Path, tokenizer: Path, **overrides) -> SFTDataModule:
    source = JsonlInstructions(
        train="sft/toy/train.jsonl", validation={"toy_dev": "sft/toy/dev.jsonl", "toy_other": "sft/toy/other.jsonl"}
    )
    kwargs = {"source": source, "tokenizer": str(tokenizer), "data_root": str(root), "max_length": 96}
    return SFTDataModule(**{**kwargs, "batch_size": 8, **overrides})


def test_data_module_exposes_vocab_domains_and_stats(sft_root, sft_tokenizer):
    dm = _dm(sft_root, sft_tokenizer)
    assert dm.vocab_size == len(load_tokenizer(sft_tokenizer))
    assert dm.domain_names == ["toy_dev", "toy_other"] and dm.test_names == []
    dm.setup("fit")
    encoded = dm._encoded["train"]
    dm.setup("fit")
    assert dm._encoded["train"] is encoded  # idempotent
    assert dm.stats["train"]["examples"] == dm.stats["train"]["kept"] == 96
    assert dm.stats["toy_dev"]["kept"] == 24 and dm.stats["source"] == {}
    assert [len(loader) for loader in dm.val_dataloader()] == [3, 1]


def test_train_batches_mask_prompts_and_padding(sft_root, sft_tokenizer):
    dm = _dm(sft_root, sft_tokenizer)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 12 and all(b["input_ids"].shape[0] == 8 for b in batches)
    eos = dm.eos_id
    for batch in batches:
        ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
        assert torch.all(labels[mask == 0] == M)  # padding is never in the loss
        trained = labels != M
        assert torch.equal(labels[trained], ids[trained])
        lengths = mask.sum(1)
        assert torch.all(ids[torch.arange(8), lengths - 1] == eos)  # every example ends with EOS ...
        assert torch.all(labels[torch.arange(8), lengths - 1] == eos)  # ... which is trained on
    n_trained = sum(int((b["labels"] != M).sum()) for b in batches)
    assert n_trained == sum(sum(t != M for t in labels) for _, labels in dm.encoded("train"))


def test_train_order_is_a_function_of_the_seed(sft_root, sft_tokenizer):
    def first_ids(seed: int) -> list[list[int]]:
        dm = _dm(sft_root, sft_tokenizer, seed=seed)
        dm.setup("fit")
        return [b["input_ids"][0].tolist() for b in dm.train_dataloader()]

    assert first_ids(0) == first_ids(0)
    assert first_ids(0) != first_ids(1)


def test_packing_builds_full_blocks_with_per_example_masks(sft_root, sft_tokenizer):
    dm = _dm(sft_root, sft_tokenizer, packing=True, batch_size=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    rows = dm.encoded("train")
    assert all(b["input_ids"].shape[1] == 96 for b in batches)
    packed_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert packed_tokens == sum(len(ids) for ids, _ in rows)
    n_eos_trained = sum(int((b["labels"] == dm.eos_id).sum()) for b in batches)
    assert n_eos_trained == len(rows) == 96  # one trained EOS per packed example
    assert len(batches) < len(rows) / 2  # several examples per block


def test_length_limits_are_counted(sft_root, sft_tokenizer, write_jsonl):
    long_rows = [{"instruction": "Copy.", "input": " ".join(["court"] * 200), "output": "ok"}] * 2
    long_rows.append({"instruction": "Copy.", "input": "", "output": " ".join(["judge"] * 200)})
    write_jsonl(sft_root / "sft" / "toy" / "train.jsonl", _rows(5, seed=0) + long_rows)
    dm = _dm(sft_root, sft_tokenizer, max_length=80, max_prompt_length=64)  # toy prompts: 34-61 tokens
    dm.setup("fit")
    assert dm.stats["train"] == {
        "examples": 8,
        "kept": 7,
        "intact": 5,
        "truncated_prompt": 2,
        "dropped_long_prompt": 0,
        "dropped_long_response": 1,
    }
    assert max(len(ids) for ids, _ in dm.encoded("train")) <= 80


def test_bad_settings_are_reported_together(sft_tokenizer):
    from xpert_pl.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        SFTDataModule(JsonlInstructions("x"), tokenizer=str(sft_tokenizer), max_length=1, long_prompt="cut")
    assert len(err.value.problems) == 2


def _val_loss(module, loader) -> float:
    from xpert_pl.training import causal_lm_loss

    total = count = 0.0
    with torch.no_grad():
        for batch in loader:
            loss, n = causal_lm_loss(module(batch["input_ids"], batch["attention_mask"]).logits, batch["labels"])
            total, count = total + loss.item() * n.item(), count + n.item()
    return total / count


def test_short_fit_lowers_the_validation_loss(sft_root, sft_tokenizer):
    from xpert_pl.models import DenseStudent
    from xpert_pl.training import CausalLMModule

    L.seed_everything(0)
    dm = _dm(sft_root, sft_tokenizer)
    overrides = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 2}
    module = CausalLMModule(
        DenseStudent("llama-tiny", overrides),
        vocab_size=dm.vocab_size,
        val_domains=dm.domain_names,
        learning_rate=3e-3,
        warmup_steps=2,
    )
    module.configure_model()
    dm.setup("fit")
    before = _val_loss(module, dm.val_dataloader()[0])
    trainer = L.Trainer(
        max_steps=36,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    after = _val_loss(module, dm.val_dataloader()[0])
    assert after < before - 2.0, (before, after)
    # the module logged one loss per named validation set, the last one equal to ours
    assert trainer.callback_metrics["val/loss/toy_dev"].item() == pytest.approx(after, rel=1e-4)
    assert "val/loss/toy_other" in trainer.callback_metrics
