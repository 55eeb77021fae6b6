"""`xpert fit` as 2 CPU processes (DDP over gloo) trains the same model as 1 process at the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
XPERT = Path(sys.executable).parent / "xpert"


def _fit(run_dir: Path, devices: int, batch_size: int, data_root: Path, tokenizer: Path, cache: Path) -> Path:
    args = [
        str(XPERT),
        "fit",
        "--config",
        str(CONFIGS / "pretrain" / "tiny.yaml"),
        f"--data.init_args.data_root={data_root}",
        f"--data.init_args.tokenizer={tokenizer}",
        f"--data.init_args.cache_dir={cache}",
        "--data.init_args.block_size=32",
        f"--data.init_args.batch_size={batch_size}",
        "--trainer.max_steps=6",
        "--model.warmup_steps=1",
        "--trainer.limit_val_batches=0",
        f"--trainer.devices={devices}",
        f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        "--trainer.enable_progress_bar=false",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir / "hf"


def test_two_process_ddp_matches_one_process(tiny_data_root, tiny_tokenizer_dir, tmp_path):
    cache = tmp_path / "cache"
    single = _fit(tmp_path / "single", 1, 4, tiny_data_root, tiny_tokenizer_dir, cache)
    ddp = _fit(tmp_path / "ddp", 2, 2, tiny_data_root, tiny_tokenizer_dir, cache)
    a, b = AutoModelForCausalLM.from_pretrained(single), AutoModelForCausalLM.from_pretrained(ddp)
    ids = torch.randint(0, a.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss_a = a(input_ids=ids, labels=ids).loss.item()
        loss_b = b(input_ids=ids, labels=ids).loss.item()
    # Same samples per global step (DistributedSampler splits the single run's permutation), so the same updates.
    assert abs(loss_a - loss_b) < 1e-4, (loss_a, loss_b)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-4), name
    initial = AutoModelForCausalLM.from_config(a.config)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), initial.parameters(), strict=True))
