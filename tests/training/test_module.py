"""The LightningModule: loss, training step, schedule, per-domain validation, checkpoint resume, warm start."""

from __future__ import annotations

import itertools
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from xpert_pl.models import DenseStudent, OlmoeSource
from xpert_pl.training import CausalLMModule, causal_lm_loss
from xpert_pl.training.schedule import warmup_cosine

VOCAB = 61


def _batches(n: int, seed: int = 0, batch: int = 4, length: int = 16) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    # A learnable pattern: each sequence counts upwards modulo the vocabulary.
    starts = torch.randint(0, VOCAB, (n * batch, 1), generator=gen)
    seqs = (starts + torch.arange(length)) % VOCAB
    return [{"input_ids": seqs[i * batch : (i + 1) * batch]} for i in range(n)]


def _module(**kwargs) -> CausalLMModule:
    overrides = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}
    module = CausalLMModule(DenseStudent("llama-tiny", overrides), vocab_size=VOCAB, **kwargs)
    module.configure_model()
    return module


def test_causal_lm_loss_matches_cross_entropy_and_ignores_masked_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 3] = -100
    loss, n = causal_lm_loss(logits, labels)
    keep = labels[:, 1:] != -100
    expected = torch.nn.functional.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    assert n.item() == keep.sum().item() == 7
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_warmup_cosine_schedule_shape():
    values = [warmup_cosine(s, warmup_steps=10, total_steps=110, min_lr_ratio=0.1) for s in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))


def test_training_lowers_the_loss():
    L.seed_everything(0)
    module = _module(learning_rate=3e-3, warmup_steps=2)
    data = _batches(30)
    before = causal_lm_loss(module(data[0]["input_ids"]).logits, data[0]["input_ids"])[0].item()
    trainer = L.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=None))
    after = causal_lm_loss(module(data[0]["input_ids"]).logits, data[0]["input_ids"])[0].item()
    assert after < before - 0.5, (before, after)
    assert module.tokens_seen == 30 * 4 * 16


def test_moe_source_training_adds_router_aux_loss():
    L.seed_everything(0)
    overrides = {
        "hidden_size": 32,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "num_experts": 4,
    }
    module = CausalLMModule(OlmoeSource("olmoe-tiny", overrides), vocab_size=VOCAB)
    module.configure_model()
    out = module.model(input_ids=_batches(1)[0]["input_ids"], output_router_logits=True)
    assert out.aux_loss is not None and out.aux_loss.item() > 0


def test_per_domain_validation_loss_is_token_weighted(tmp_path):
    L.seed_everything(0)
    module = _module(val_domains=["a", "b"])
    loaders = [DataLoader(_batches(2, seed=1), batch_size=None), DataLoader(_batches(1, seed=2), batch_size=None)]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, loaders, verbose=False)
    merged = {k: v for m in metrics for k, v in m.items()}
    losses = {
        name: [causal_lm_loss(module(b["input_ids"]).logits, b["input_ids"])[0].item() for b in _batches(n, seed=s)]
        for name, n, s in (("a", 2, 1), ("b", 1, 2))
    }
    assert merged["val/loss/a"] == pytest.approx(sum(losses["a"]) / 2, rel=1e-5)
    assert merged["val/loss/b"] == pytest.approx(losses["b"][0], rel=1e-5)
    assert merged["val/loss"] == pytest.approx((sum(losses["a"]) + losses["b"][0]) / 3, rel=1e-5)


def test_checkpoint_resumes_at_the_same_step(tmp_path):
    data = DataLoader(_batches(20), batch_size=None)

    def trainer(max_steps: int) -> L.Trainer:
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=5)
        return L.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            logger=False,
            callbacks=[ckpt],
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    L.seed_everything(0)
    first = _module()
    trainer(10).fit(first, data)
    resumed_module = _module()
    resumed = trainer(15)
    resumed.fit(resumed_module, data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.global_step == 15
    assert resumed_module.tokens_seen == 15 * 4 * 16


def test_warm_start_from_exported_hf_directory(tmp_path):
    L.seed_everything(0)
    source = _module()
    source.model.save_pretrained(tmp_path / "hf")
    L.seed_everything(1)
    warm = _module(init_checkpoint=str(tmp_path / "hf"))
    for (name, a), (_, b) in zip(source.model.state_dict().items(), warm.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert warm.init_report.initializer == "WarmStart"


def test_test_loss_is_reported_per_named_test_set():
    class TwoTestSets(L.LightningDataModule):
        test_names = ("dollyeval", "superni_test")

        def test_dataloader(self):
            return [DataLoader(_batches(2, seed=3), batch_size=None), DataLoader(_batches(1, seed=4), batch_size=None)]

    L.seed_everything(0)
    module = _module()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    merged = {k: v for m in trainer.test(module, datamodule=TwoTestSets(), verbose=False) for k, v in m.items()}
    losses = {
        name: [causal_lm_loss(module(b["input_ids"]).logits, b["input_ids"])[0].item() for b in _batches(n, seed=s)]
        for name, n, s in (("dollyeval", 2, 3), ("superni_test", 1, 4))
    }
    assert merged["test/loss/dollyeval"] == pytest.approx(sum(losses["dollyeval"]) / 2, rel=1e-5)
    assert merged["test/loss/superni_test"] == pytest.approx(losses["superni_test"][0], rel=1e-5)
    assert merged["test/loss"] == pytest.approx(sum(losses["dollyeval"] + losses["superni_test"]) / 3, rel=1e-5)
