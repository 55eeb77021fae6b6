"""`xpert analyze` and `xpert extract`: the XPERT steps between training the source and the students."""

from __future__ import annotations

import logging
from pathlib import Path

from xpert_pl.analysis import ConsistentExpertSelector, ExpertSelector, model_fingerprint, run_analysis
from xpert_pl.bank import TuckerConsolidator, extract_bank
from xpert_pl.data import PretrainDataModule
from xpert_pl.demo import demo
from xpert_pl.errors import raise_if_problems
from xpert_pl.experts import moe_layers
from xpert_pl.models import load_causal_lm

log = logging.getLogger(__name__)

__all__ = ["analyze", "demo", "extract"]


def analyze(
    model: str,
    data: PretrainDataModule,
    out_dir: str = "runs/analysis",
    selector: ExpertSelector | None = None,
    max_tokens_per_domain: int | None = None,
    plots: bool = True,
    trust_remote_code: bool = False,
) -> None:
    """Count how often each expert is routed to, per layer and domain, and select the consistent experts.

    Args:
        model: source MoE: a local Hugging Face directory (or a hub id when online).
        data: the domains to analyse; their validation split is used (inference only).
        out_dir: where counts, selection.json, heatmaps and the manifest are written.
        selector: the selection strategy (default: ConsistentExpertSelector with n = top-k).
        max_tokens_per_domain: token budget per domain (None: the whole validation split).
        plots: write per-layer heatmaps.
        trust_remote_code: allow the checkpoint's own Python code to run.
    """
    source = load_causal_lm(model, trust_remote_code=trust_remote_code)
    moe_layers(source)  # fails with the list of supported families before any data work
    problems = []
    if data.vocab_size > source.config.vocab_size:
        problems.append(
            f"tokenizer has {data.vocab_size} tokens but {model} has vocab_size "
            f"{source.config.vocab_size}; analyse with the tokenizer the source was trained with"
        )
    raise_if_problems(problems)
    data.setup("validate")
    batches = dict(zip(data.domain_names, data.val_dataloader(), strict=True))
    meta = {
        "model": str(model),
        "model_fingerprint": model_fingerprint(source),
        "tokenizer": str(data.hparams.tokenizer),
    }
    _, selection = run_analysis(
        source,
        batches,
        out_dir,
        selector or ConsistentExpertSelector(),
        max_tokens_per_domain=max_tokens_per_domain,
        meta=meta,
        plots=plots,
    )
    for layer in selection.layers:
        log.info("layer %d: experts %s", layer.layer, layer.experts)
    log.info("analysis written to %s", Path(out_dir).resolve())


def extract(
    model: str,
    selection: str,
    out_dir: str = "runs/bank",
    consolidator: TuckerConsolidator | None = None,
    trust_remote_code: bool = False,
) -> None:
    """Stack the selected experts per layer and matrix, Tucker-decompose them, and save the knowledge bank.

    Args:
        model: source MoE: a local Hugging Face directory (or a hub id when online).
        selection: selection.json written by `xpert analyze`.
        out_dir: directory of the knowledge bank (bank.safetensors + manifest.json), written atomically.
        consolidator: Tucker settings (ranks as absolute sizes or fractions per mode).
        trust_remote_code: allow the checkpoint's own Python code to run.
    """
    if not Path(selection).is_file():
        raise FileNotFoundError(f"selection '{selection}' not found; run `xpert analyze` first")
    source = load_causal_lm(model, trust_remote_code=trust_remote_code)
    bank = extract_bank(
        source,
        selection,
        consolidator or TuckerConsolidator(),
        source_description={"model": str(model), "model_fingerprint": model_fingerprint(source)},
    )
    bank.save(out_dir)
    log.info("knowledge bank written to %s", Path(out_dir).resolve())
