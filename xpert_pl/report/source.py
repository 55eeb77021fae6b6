"""The report's opening section: the source MoE every verdict is read against (architecture, tokens seen, final
validation loss overall and per domain)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from xpert_pl.layout import HF_DIR, METRICS_FILE, RunLayout, hf_config
from xpert_pl.report.render import Block, Bullets, Heading, Paragraph, Table
from xpert_pl.report.runs import read_metrics_csv

SOURCE_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "num_experts_per_tok",
)


def source_section(layout: RunLayout) -> list[Block]:
    """Architecture, tokens seen and final validation losses of the source MoE (what its export and run hold)."""
    config = _read_json(hf_config(layout.source_hf))
    if not config:
        return []
    items = [f"`{k}`: {config[k]}" for k in SOURCE_FIELDS if config.get(k) is not None]
    tokens = tokens_seen(layout.source_run)
    if tokens is not None:
        items.append(f"tokens seen in training: {tokens:,} ({tokens / 1e6:.2f} M)")
    blocks: list[Block] = [Heading(2, "Source MoE"), Bullets(items)]
    final = final_validation(layout.source_run / METRICS_FILE)
    if final:
        unigram = (_read_json(layout.unigram) or {}).get("loss", {})
        rows = []
        for key, value in sorted(final.items(), key=lambda kv: (kv[0] != "val/loss", kv[0])):
            floor = unigram.get("all" if key == "val/loss" else key.removeprefix("val/loss/"))
            rows.append([_domain(key), f"{value:.4f}", "-" if floor is None else f"{floor:.4f}"])
        blocks += [
            Paragraph(
                "The source's own validation loss at its last step (nats/token), on the split the students are "
                "validated on, beside a unigram model of the train split (add-one smoothing) on the same tokens: "
                "a source near the unigram loss has little knowledge to transfer."
            ),
            Table(["domain", "source", "unigram"], rows, (False, True, True)),
        ]
    elif layout.source_hf != layout.source_run / HF_DIR:
        blocks.append(Paragraph(f"The source was given (`{layout.source_hf}`): its training run is not here."))
    return blocks


def tokens_seen(run_dir: Path) -> int | None:
    """max_steps x batch x block (x devices) of a finished training run, from its saved config.yaml (None if
    unknown)."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file() or not (run_dir / HF_DIR).is_dir():
        return None
    config = yaml.safe_load(config_file.read_text()) or {}
    data, trainer = config.get("data", {}).get("init_args", {}), config.get("trainer", {})
    devices = trainer.get("devices") if isinstance(trainer.get("devices"), int) else 1
    sizes = [trainer.get("max_steps"), data.get("batch_size"), data.get("block_size")]
    if not all(isinstance(v, int) and v > 0 for v in sizes):
        return None
    return sizes[0] * sizes[1] * sizes[2] * max(1, devices)


def final_validation(metrics: Path) -> dict[str, float]:
    """The last logged value of `val/loss` and of every `val/loss/<domain>`."""
    final: dict[str, float] = {}
    for row in read_metrics_csv(metrics) if metrics.is_file() else []:
        final |= {k: v for k, v in row.items() if k == "val/loss" or k.startswith("val/loss/")}
    return final


def _domain(key: str) -> str:
    return "all domains" if key == "val/loss" else key.removeprefix("val/loss/")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
