"""CPU training speed of the reference bench's models at float32, bf16 autocast and with `torch.compile`, side by side.

`make bench` trains the reference source MoE (`olmoe-reference`) once and about 46 dense students (`llama-tiny`) at
float32 (`precision: 32-true`). This measures, under the same Lightning Trainer and CausalLMModule `xpert fit` uses,
the tokens/s of each model at each setting (precision x compile) on identical batches, so the bench's time can be
read against what the CPU allows (bf16 runs on AMX / AVX-512 BF16 units where the CPU has them). Rounds alternate
the settings so machine noise hits all alike; the median round is reported. The final training loss of each setting
on the same batches is printed beside its speed as a first check that the setting trains alike; it is not a quality
result (random tokens), which only a bench run gives. Writes benchmarks/results/cpu_precision.json.

    python benchmarks/cpu_precision.py [--steps 40] [--warmup 10] [--rounds 2] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import lightning as L
import torch
import transformers
from throughput import VOCAB, _StepClock, cpu_trainer, make_batches
from torch.utils.data import DataLoader

from xpert_pl.models import DenseStudent, ModelBuilder, OlmoeSource
from xpert_pl.training import CausalLMModule

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_precision.json"
MODELS = {
    "student llama-tiny": lambda: DenseStudent("llama-tiny"),
    "source olmoe-reference": lambda: OlmoeSource("olmoe-reference"),
}
SETTINGS = {
    "fp32": ("32-true", False),
    "bf16-mixed": ("bf16-mixed", False),
    "fp32 + compile": ("32-true", True),
    "bf16-mixed + compile": ("bf16-mixed", True),
}


class _LastLoss(L.Callback):
    def __init__(self):
        self.loss = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.loss = float(outputs["loss"])


def fit_rate(builder: ModelBuilder, setting: str, batches: list, warmup: int, log_dir: Path) -> tuple[float, float]:
    """(tokens/s after `warmup` steps, last training loss) of one `xpert fit`-like run at `setting`."""
    precision, compile_ = SETTINGS[setting]
    torch.manual_seed(0)
    module = CausalLMModule(builder, vocab_size=VOCAB, learning_rate=3e-3, warmup_steps=5, compile=compile_)
    clock, last = _StepClock(warmup), _LastLoss()
    trainer = cpu_trainer(len(batches), log_dir, [clock, last], precision)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    tokens = sum(b["input_ids"].numel() for b in batches[warmup:])
    return tokens / (clock.end - clock.start), last.loss


def measure(args: argparse.Namespace) -> dict:
    batches = make_batches(args.steps, args.batch, args.length)
    rates = {m: {s: [] for s in SETTINGS} for m in MODELS}
    losses: dict[str, dict[str, float]] = {m: {} for m in MODELS}
    for round_ in range(args.rounds):
        for model, builder in MODELS.items():
            for setting in SETTINGS:
                with tempfile.TemporaryDirectory() as logs:
                    rate, loss = fit_rate(builder(), setting, batches, args.warmup, Path(logs))
                rates[model][setting].append(rate)
                losses[model][setting] = loss
                print(f"round {round_} {model:24s} {setting:22s} {rate:9,.0f} tok/s  last loss {loss:.4f}", flush=True)
    return {
        model: {
            setting: {
                "tokens_per_s": statistics.median(rates[model][setting]),
                "speedup_vs_fp32": statistics.median(rates[model][setting]) / statistics.median(rates[model]["fp32"]),
                "last_train_loss": losses[model][setting],
                "rounds": rates[model][setting],
            }
            for setting in SETTINGS
        }
        for model in MODELS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    result = {
        "models": measure(args),
        "config": {**vars(args), "vocab": VOCAB, "device": "cpu", "threads": torch.get_num_threads()},
        "cpu": {"name": platform.processor() or platform.machine(), "bf16_units": _bf16_flags()},
        "versions": {"torch": torch.__version__, "lightning": L.__version__, "transformers": transformers.__version__},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for model, settings in result["models"].items():
        for setting, row in settings.items():
            print(f"{model:24s} {setting:22s} {row['tokens_per_s']:9,.0f} tok/s  x{row['speedup_vs_fp32']:.2f}")


def _bf16_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return []
    return sorted(f for f in flags if f in {"avx512_bf16", "amx_bf16", "amx_tile"})


if __name__ == "__main__":
    main()
