"""Training objectives: next-token (the default), distillation from a frozen teacher, and the FLOPs they log."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from xpert_pl.errors import ConfigError
from xpert_pl.models import DenseStudent, OlmoeSource, load_causal_lm
from xpert_pl.training import (
    CausalLMModule,
    DistillationObjective,
    NextTokenObjective,
    causal_lm_loss,
    distillation_kl,
)
from xpert_pl.training.flops import active_parameters, forward_flops_per_token, training_flops_per_token

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}


def _batches(n: int, vocab: int, seed: int = 0, batch: int = 4, length: int = 16) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    # A learnable pattern: each sequence counts upwards modulo the vocabulary.
    starts = torch.randint(0, vocab, (n * batch, 1), generator=gen)
    seqs = (starts + torch.arange(length)) % vocab
    return [{"input_ids": seqs[i * batch : (i + 1) * batch]} for i in range(n)]


def _student(vocab: int, **kwargs) -> CausalLMModule:
    module = CausalLMModule(DenseStudent("llama-tiny", SMALL), vocab_size=vocab, **kwargs)
    module.configure_model()
    return module


def _trainer(max_steps: int, **kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False)
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        **{**defaults, **kwargs},
    )


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(x / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_distillation_kl_matches_a_hand_computation_with_temperature_and_masking(kind):
    student = [[1.0, 2.0, 0.0], [0.5, 0.5, 0.5], [3.0, -1.0, 2.0], [9.0, 9.0, 9.0]]
    teacher = [[0.0, 1.0, 1.0], [4.0, 0.0, 0.0], [1.0, 1.0, -2.0], [0.0, 0.0, 0.0]]
    labels = torch.tensor([[0, 1, -100, 2]])  # next-token labels 1, -100, 2: positions 0 and 2 count
    got = distillation_kl(torch.tensor([student]), torch.tensor([teacher]), labels, kind, temperature=2.0)
    per_position = []
    for t in (0, 2):
        p, q = _softmax(teacher[t], 2.0), _softmax(student[t], 2.0)
        per_position.append(_kl(p, q) if kind == "forward_kl" else _kl(q, p))
    assert got.item() == pytest.approx(sum(per_position) / 2, rel=1e-6)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_distillation_loss_is_zero_when_student_equals_teacher(kind, tmp_path):
    L.seed_everything(0)
    student = _student(61)
    student.model.save_pretrained(tmp_path / "teacher")
    batch = _batches(1, 61)[0]
    batch["labels"] = batch["input_ids"].clone()
    batch["labels"][:, :3] = -100
    outputs = student(batch["input_ids"])
    ce, _ = causal_lm_loss(outputs.logits, batch["labels"])
    for alpha in (1.0, 0.25):
        objective = DistillationObjective(str(tmp_path / "teacher"), kind=kind, temperature=2.0, alpha=alpha)
        objective.setup(student.model, torch.device("cpu"))
        loss, metrics = objective.loss(outputs, batch)
        assert abs(metrics["kd_loss"].item()) < 1e-6
        assert loss.item() == pytest.approx((1 - alpha) * ce.item(), abs=1e-6)
        assert metrics["ce_loss"].item() == pytest.approx(ce.item(), rel=1e-6)


def test_next_token_objective_gives_exactly_the_old_loss():
    L.seed_everything(0)
    overrides = {**SMALL, "intermediate_size": 32, "num_hidden_layers": 2, "num_experts": 4}
    module = CausalLMModule(OlmoeSource("olmoe-tiny", overrides), vocab_size=61)
    module.configure_model()
    batch = _batches(1, 61)[0]
    out = module(batch["input_ids"])
    objective = NextTokenObjective()
    objective.setup(module.model, torch.device("cpu"))
    loss, metrics = objective.loss(out, batch)
    # The module's training loss before objectives existed: next-token CE plus coef x router aux loss.
    ce, _ = causal_lm_loss(out.logits, batch["input_ids"])
    old = ce + module.model.config.router_aux_loss_coef * out.aux_loss
    assert module.model.config.router_aux_loss_coef > 0 and out.aux_loss.item() > 0
    assert torch.equal(loss, old)
    assert torch.equal(metrics["loss"], ce.detach()) and torch.equal(metrics["aux_loss"], out.aux_loss.detach())
    assert torch.equal(metrics["ppl"], torch.exp(ce.detach()))


def _hand_counted_olmoe(config) -> tuple[int, int]:
    """(all parameters, active parameters per token) of an OLMoE config, counted tensor by tensor."""
    h, i, e, k, v = (
        config.hidden_size,
        config.intermediate_size,
        config.num_experts,
        config.num_experts_per_tok,
        config.vocab_size,
    )
    attention = 4 * h * h + 2 * h  # q, k, v, o and OLMoE's q/k norms (as many kv heads as heads here)
    expert = 3 * h * i  # gate, up (fused as gate_up_proj) and down
    dense_per_layer = attention + e * h + 2 * h  # router, the two layer norms
    embeddings = 2 * v * h + h  # untied embedding and lm_head, final norm
    layers = config.num_hidden_layers
    total = embeddings + layers * (dense_per_layer + e * expert)
    active = embeddings + layers * (dense_per_layer + k * expert)
    return total, active


def test_flops_count_active_parameters_of_the_tiny_olmoe(tiny_source_dir):
    teacher = load_causal_lm(tiny_source_dir)
    total, active = _hand_counted_olmoe(teacher.config)
    assert sum(p.numel() for p in teacher.parameters()) == total
    assert active_parameters(teacher) == active < total
    assert forward_flops_per_token(teacher) == 2 * active
    dense = DenseStudent("llama-tiny", SMALL).build(61)
    assert training_flops_per_token(dense) == 6 * sum(p.numel() for p in dense.parameters())


def test_vocabulary_mismatch_names_both_sizes(tiny_source_dir):
    student = _student(61)
    objective = DistillationObjective(str(tiny_source_dir))
    teacher_vocab = json.loads((Path(tiny_source_dir) / "config.json").read_text())["vocab_size"]
    with pytest.raises(ValueError, match=rf"vocab_size {teacher_vocab} but the student has 61.*tokenizer"):
        objective.setup(student.model, torch.device("cpu"))


def test_invalid_arguments_are_reported_together():
    with pytest.raises(ConfigError) as err:
        DistillationObjective("teacher", kind="js", temperature=0.0, alpha=1.5, teacher_dtype="int8")
    assert len(err.value.problems) == 4
    assert "forward_kl, reverse_kl" in str(err.value) and "[0, 1]" in str(err.value)


def test_distillation_from_the_tiny_olmoe_trains_with_a_frozen_teacher_outside_the_module(tiny_source_dir, tmp_path):
    teacher_dir = str(tiny_source_dir)
    vocab = load_causal_lm(teacher_dir).config.vocab_size
    L.seed_everything(0)
    objective = DistillationObjective(teacher_dir, temperature=2.0, alpha=0.5)
    module = _student(vocab, objective=objective, learning_rate=3e-3, warmup_steps=2)
    steps = 20
    data = _batches(steps, vocab)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=steps)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="", version="")
    trainer = _trainer(steps, logger=logger, callbacks=[ckpt], enable_checkpointing=True)
    objective.setup(module.model, torch.device("cpu"))
    before = objective.loss(module(data[0]["input_ids"]), data[0])[0].item()
    trainer.fit(module, DataLoader(data, batch_size=None))
    after = objective.loss(module(data[0]["input_ids"]), data[0])[0].item()
    # The random teacher is near uniform, so KL holds the mixed loss up: it falls less than plain CE would.
    assert after < before - 0.25, (before, after)

    teacher = objective._teacher
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised and not optimised & teacher_ids
    assert set(module.state_dict()) == {f"model.{k}" for k in module.model.state_dict()}

    tokens = steps * 4 * 16
    assert module.flops == {
        "student": tokens * training_flops_per_token(module.model),
        "teacher": tokens * forward_flops_per_token(teacher),
    }
    assert trainer.callback_metrics["train/teacher_flops"].item() == pytest.approx(module.flops["teacher"], rel=1e-6)
    assert {"train/kd_loss", "train/ce_loss"} <= set(trainer.callback_metrics)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["flops"] == module.flops and all(k.startswith("model.") for k in saved["state_dict"])
    described = json.loads((tmp_path / "objective.json").read_text())
    assert described["teacher_flops_per_token"] == forward_flops_per_token(teacher) > 0


def test_resumed_run_continues_the_flop_count(tmp_path):
    data = DataLoader(_batches(10, 61), batch_size=None)

    def trainer(max_steps: int) -> L.Trainer:
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=4)
        return _trainer(max_steps, callbacks=[ckpt], enable_checkpointing=True)

    L.seed_everything(0)
    trainer(4).fit(_student(61), data)
    resumed = _student(61)
    trainer(6).fit(resumed, data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.flops == {"student": 6 * 4 * 16 * training_flops_per_token(resumed.model), "teacher": 0}
