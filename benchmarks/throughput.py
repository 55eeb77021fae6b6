"""Training throughput of `xpert fit` (CausalLMModule + Lightning Trainer) against a bare PyTorch loop.

Both train the same Hugging Face model (same preset, seed, batches, AdamW settings, schedule and gradient
clipping); rounds alternate between the two so machine noise hits both alike, and the median round is reported.
Writes benchmarks/results/throughput.json with fit_tokens_per_s, bare_tokens_per_s and ratio (target >= 0.97).

    python benchmarks/throughput.py [--preset llama-tiny] [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
import transformers
from torch.utils.data import DataLoader

from xpert_pl.models import DenseStudent
from xpert_pl.training import CausalLMModule, causal_lm_loss
from xpert_pl.training.schedule import warmup_cosine

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
VOCAB = 4096
HPARAMS = {"learning_rate": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.95), "warmup_steps": 5, "min_lr_ratio": 0.1}


def make_batches(steps: int, batch: int, length: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, VOCAB, (batch, length), generator=gen)} for _ in range(steps)]


def bare_loop(preset: str, batches: list[dict[str, torch.Tensor]], warmup: int) -> float:
    """Tokens/s of a plain PyTorch loop doing what CausalLMModule.training_step + the Trainer do."""
    torch.manual_seed(0)
    model = DenseStudent(preset).build(VOCAB)
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": HPARAMS["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=HPARAMS["learning_rate"], betas=HPARAMS["betas"])
    schedule = partial(
        warmup_cosine,
        warmup_steps=HPARAMS["warmup_steps"],
        total_steps=len(batches),
        min_lr_ratio=HPARAMS["min_lr_ratio"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start = None
    for step, batch in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        loss, _ = causal_lm_loss(logits, batch["input_ids"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return _rate(batches[warmup:], time.perf_counter() - start)


class _StepClock(L.Callback):
    """Starts the clock after `warmup` optimizer steps and stops it when training ends."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()


def lightning_fit(preset: str, batches: list[dict[str, torch.Tensor]], warmup: int, log_dir: Path) -> float:
    """Tokens/s of CausalLMModule under the Trainer, with the CSV logger as `xpert fit` uses it."""
    torch.manual_seed(0)
    module = CausalLMModule(DenseStudent(preset), vocab_size=VOCAB, **HPARAMS)
    clock = _StepClock(warmup)
    cpu_trainer(len(batches), log_dir, [clock]).fit(module, DataLoader(batches, batch_size=None))
    return _rate(batches[warmup:], clock.end - clock.start)


def cpu_trainer(max_steps: int, log_dir: Path, callbacks: list[L.Callback], precision: str = "32-true") -> L.Trainer:
    """A CPU Trainer as `xpert fit` configures it (clipping, CSV logger), without checkpoints or progress bars."""
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=max_steps,
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        logger=L.pytorch.loggers.CSVLogger(log_dir, name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def _rate(batches: list[dict[str, torch.Tensor]], seconds: float) -> float:
    return sum(b["input_ids"].numel() for b in batches) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    batches = make_batches(args.steps, args.batch, args.length)
    bare, fit = [], []
    tmp = RESULTS.parent / ".throughput_logs"
    for round_ in range(args.rounds):
        bare.append(bare_loop(args.preset, batches, args.warmup))
        fit.append(lightning_fit(args.preset, batches, args.warmup, tmp / f"round{round_}"))
        print(f"round {round_}: bare {bare[-1]:,.0f} tok/s, fit {fit[-1]:,.0f} tok/s")
    result = {
        "fit_tokens_per_s": statistics.median(fit),
        "bare_tokens_per_s": statistics.median(bare),
        "ratio": statistics.median(fit) / statistics.median(bare),
        "rounds": {"fit": fit, "bare": bare},
        "config": {**vars(args), "vocab": VOCAB, "device": "cpu", "threads": torch.get_num_threads()},
        "versions": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "gpu": "not measured: no CUDA device on this machine" if not torch.cuda.is_available() else "see gpu_mfu",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("fit_tokens_per_s", "bare_tokens_per_s", "ratio")}, indent=2))


if __name__ == "__main__":
    main()
