"""The XPERT steps between training the source and the students: `analyze` (routing counts, selection) and
`extract` (the knowledge bank). `xpert analyze` / `xpert extract` wrap them."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only

from xpert_pl.analysis import ActivationCounts, ConsistentExpertSelector, ExpertSelector
from xpert_pl.analysis.counter import Precision
from xpert_pl.artifacts import atomic_directory, output_problems, replace_problem
from xpert_pl.bank import TuckerConsolidator, extract_bank
from xpert_pl.bank.extract import read_selection
from xpert_pl.data import PretrainDataModule
from xpert_pl.errors import raise_if_problems
from xpert_pl.layout import BANK_MANIFEST_FILE, COUNTS_FILE, SELECTION_FILE
from xpert_pl.models import load_causal_lm
from xpert_pl.provenance import open_checked_source, source_fingerprint, source_record
from xpert_pl.resume import FinishedUnits, partial_directory
from xpert_pl.sources.experts import moe_layers
from xpert_pl.tokenizer import check_tokenizer_matches

log = logging.getLogger(__name__)

__all__ = ["AnalysisResult", "BankResult", "analyze", "extract"]


@dataclass(frozen=True)
class AnalysisResult:
    """What `analyze` wrote: the analysis folder, its selection and counts files, and the selected experts."""

    out_dir: Path
    selection: Path
    counts: Path
    experts: dict[int, list[int]]
    """Selected experts per source layer."""


@dataclass(frozen=True)
class BankResult:
    """What `extract` wrote: the bank folder, its manifest, and how many bank layers it holds."""

    out_dir: Path
    manifest: Path
    layers: int


def analyze(
    model: str,
    data: PretrainDataModule,
    out_dir: str = "runs/analysis",
    selector: ExpertSelector | None = None,
    max_tokens_per_domain: int | None = None,
    plots: bool = True,
    trust_remote_code: bool = False,
    domains: str | None = None,
    precision: Precision = "auto",
    devices: int = 1,
) -> AnalysisResult | None:
    """Count how often each expert is routed to, per layer and domain, and select the consistent experts.

    Args:
        model: source MoE: a local Hugging Face directory (or a hub id when online).
        data: the domains to analyse; their validation split is used (inference only).
        out_dir: where counts, selection.json, heatmaps and the manifest are written.
        selector: the selection strategy (default: ConsistentExpertSelector with n = top-k).
        max_tokens_per_domain: token budget per domain (None: the whole validation split).
        plots: write per-layer heatmaps.
        trust_remote_code: allow the checkpoint's own Python code to run.
        domains: a domain-set YAML (see `xpert_pl.data.domain_sets`) that replaces `data.domains`.
        precision: compute dtype: `auto` is bfloat16 on a CUDA device that supports it, else float32, or the
            checkpoint's stored dtype when float32 would not fit in memory; the model is loaded once, in that
            dtype, after an estimate from its weight files' headers shows it fits. Counts accumulate in
            int64/float64 regardless.
        devices: devices to count on (CUDA when available, else CPU processes); above 1 the batches are shared
            out by Lightning DDP (one process per device) and only rank 0 writes.

    Returns:
        What was written (None on a rank other than 0 of a multi-device run).
    """
    from xpert_pl.analysis.loading import bound_cpu_allocations, load_for_analysis, plan_precision
    from xpert_pl.analysis.run import write_analysis
    from xpert_pl.data.domain_sets import describe_domain_set

    selector = selector or ConsistentExpertSelector()
    # Everything the config, the model's config.json and the data files allow is checked before any tokenising
    # or model loading.
    problems = output_problems(out_dir, "analysis")
    problems += _source_problems(model, selector, trust_remote_code)
    problems += _prepare_domains(data, domains, devices, selector)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The dtype that fits, from the weight files' headers: the model is read once, in that dtype.
    dtype, memory_problems = plan_precision(model, precision, device) if not problems else (None, [])
    raise_if_problems(problems + memory_problems)
    check_tokenizer_matches(data.tokenizer, model, trust_remote_code=trust_remote_code)
    load_start = time.perf_counter()
    source = load_for_analysis(model, dtype, trust_remote_code=trust_remote_code, fallback=load_causal_lm)
    load_seconds = time.perf_counter() - load_start
    if device.type == "cpu":
        bound_cpu_allocations()
    layers = moe_layers(source)
    fingerprint = source_fingerprint(source)
    settings = {"model_fingerprint": fingerprint, "max_tokens_per_domain": max_tokens_per_domain, "dtype": str(dtype)}
    settings |= {"data": _counted_data(data), "domains": [dataclasses.asdict(s) for s in data.domains]}
    finished = FinishedUnits(partial_directory(out_dir), settings) if devices == 1 else None
    count_start = time.perf_counter()
    counts = _count_routing(source, data, device, devices, max_tokens_per_domain, precision, finished)
    count_seconds = time.perf_counter() - count_start
    if counts is None:  # a rank other than 0 of a multi-device run: rank 0 writes
        return None
    meta = {
        "model": str(model),
        "model_fingerprint": fingerprint,
        "source": source_record(fingerprint, model),
        "tokenizer": str(data.hparams.tokenizer),
        "max_tokens_per_domain": max_tokens_per_domain,
        "precision": str(dtype).removeprefix("torch."),
        "devices": devices,
        "domain_set_file": None if domains is None else str(Path(domains).resolve()),
        "domain_set": describe_domain_set(data.domains, data.hparams.data_root),
        "moe_layers": [layer.index for layer in layers],
        # Always-on experts are not routed, so they are never counted or selectable; listed for the record.
        "shared_experts": {str(layer.index): layer.shared for layer in layers if layer.shared},
        "timing": _analysis_timing(load_seconds, count_seconds, int(counts.tokens.sum())),
    }
    with atomic_directory(out_dir, "analysis") as tmp:
        selection = write_analysis(counts, tmp, selector, meta, plots)
    if finished is not None:
        finished.discard()
    for layer in selection.layers:
        log.info("layer %d: experts %s", layer.layer, layer.experts)
    log.info("analysis written to %s", Path(out_dir).resolve())
    out = Path(out_dir)
    experts = {layer.layer: list(layer.experts) for layer in selection.layers}
    return AnalysisResult(out, out / SELECTION_FILE, out / COUNTS_FILE, experts)


def _analysis_timing(load_seconds: float, count_seconds: float, tokens: int) -> dict[str, float | int]:
    """Load and counting seconds with the tokens counted per second, for the analysis manifest and the log."""
    timing = {"load_seconds": load_seconds, "count_seconds": count_seconds, "tokens": tokens}
    timing["tokens_per_second"] = tokens / count_seconds if count_seconds > 0 else 0.0
    log.info(
        "model loaded in %.1f s; %d tokens counted in %.1f s (%.1f tokens/s)",
        load_seconds,
        tokens,
        count_seconds,
        timing["tokens_per_second"],
    )
    return timing


def _prepare_domains(
    data: PretrainDataModule, domains: str | None, devices: int, selector: ExpertSelector
) -> list[str]:
    """Swap in the domain set `domains` (if given); the problems of its files, `devices` and the selector's domain."""
    from xpert_pl.data.domain_sets import domain_file_problems, load_domain_set

    if domains is not None:
        specs = load_domain_set(domains)
        data.domains = specs
        data.hparams["domains"] = [dataclasses.asdict(s) for s in specs]
    problems = domain_file_problems(data.domains, data.hparams.data_root)
    if devices < 1:
        problems.append(f"devices must be >= 1, got {devices}")
    wanted = getattr(selector, "domain", None)
    if wanted is not None and wanted not in data.domain_names:
        problems.append(
            f"selector {type(selector).__name__} names domain '{wanted}', which is not analysed "
            f"(domains: {', '.join(data.domain_names)})"
        )
    return problems


def _counted_data(data: PretrainDataModule) -> dict[str, Any]:
    """What decides the tokens an analysis counts: a domain counted by an interrupted run is kept only if these match
    (the data root resolved, so a changed $XPERT_DATA_ROOT counts anew)."""
    from xpert_pl.paths import DataRootError, data_root

    keys = ("tokenizer", "block_size", "max_val_blocks_per_domain", "val_fraction", "max_docs_per_domain")
    try:
        root = str(data_root(data.hparams["data_root"]))
    except DataRootError:
        root = None  # Hub domains only
    return {k: data.hparams[k] for k in keys} | {"data_root": root}


def _source_problems(model: str, selector: ExpertSelector, trust_remote_code: bool) -> list[str]:
    """Problems the source's config.json shows without loading weights: its family, and the selector's n."""
    from transformers import AutoConfig

    from xpert_pl.sources.families import UnsupportedModelError, family_of

    if not Path(model).exists() and Path(model).is_absolute():
        return [f"--model '{model}' does not exist; give a Hugging Face model directory or hub id"]
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        return [f"--model '{model}': cannot read its config.json ({str(err).splitlines()[0]})"]
    try:
        family = family_of(config)
    except UnsupportedModelError as err:
        return [f"--model '{model}': {err}"]
    experts = family.num_experts(config)
    if selector.n is not None and selector.n > experts:
        return [f"selector keeps n={selector.n} experts per layer but '{model}' has {experts}; lower selector.n"]
    return []


def _count_routing(
    source: torch.nn.Module,
    data: PretrainDataModule,
    device: torch.device,
    devices: int,
    max_tokens_per_domain: int | None,
    precision: Precision,
    finished: FinishedUnits | None = None,
) -> ActivationCounts | None:
    """Routing counts over the validation loaders: on `device`, or shared out by DDP over `devices`.

    On one device each domain's counts are kept in `finished` as soon as they are complete, and domains found
    there are not counted again (every layer is counted in the same forward pass, so a domain is the unit).
    Returns None on ranks other than 0 (every rank holds the totals, but only one should write them).
    """
    from xpert_pl.analysis.counter import count_activations
    from xpert_pl.analysis.distributed import count_activations_distributed

    data.setup("validate")
    loaders = dict(zip(data.domain_names, data.val_dataloader(), strict=True))
    if devices == 1:
        parts = []
        for domain, loader in loaders.items():
            if finished is not None and finished.has(domain):
                log.info("domain %s: counted by an earlier run (%s)", domain, finished.path(domain))
                parts.append(ActivationCounts.load(finished.path(domain)))
                continue
            part = count_activations(source.to(device), {domain: loader}, max_tokens_per_domain, precision=precision)
            if finished is not None:
                with finished.writing(domain) as tmp:
                    part.save(tmp)
            parts.append(part)
        return ActivationCounts.concat(parts)
    trainer_kwargs = {"accelerator": device.type, "devices": devices, "strategy": "ddp"}
    counts = count_activations_distributed(source, loaders, trainer_kwargs, max_tokens_per_domain, precision)
    return counts if rank_zero_only.rank == 0 else None


def extract(
    model: str,
    selection: str,
    out_dir: str = "runs/bank",
    consolidator: TuckerConsolidator | None = None,
    trust_remote_code: bool = False,
    group_layers: int | None = None,
    dry_run: bool = False,
    align_neurons: bool = False,
) -> BankResult | None:
    """Stack the selected experts per layer and matrix, Tucker-decompose them, and save the knowledge bank.

    Args:
        model: source MoE: a local Hugging Face directory, whose safetensors files are read expert by expert
            without loading the model, or a hub id when online (the model is loaded).
        selection: selection.json written by `xpert analyze`.
        out_dir: directory of the knowledge bank (bank.safetensors + manifest.json), written atomically.
        consolidator: Tucker settings: ranks (absolute, fractions per mode, or null for energy-chosen), energy
            threshold, algorithm (`auto` takes the ST-HOSVD fast path for large tensors).
        trust_remote_code: allow the checkpoint's own Python code to run.
        group_layers: build the bank from G groups of contiguous selected layers, each decomposed once as the
            stack of all its layers' selected experts (bank layers 0..G-1, for the `grouped` depth strategy);
            None: one bank layer per selected layer.
        dry_run: validate the inputs, print per layer (or group) and matrix the stacked shape, ranks, algorithm
            and memory, read from the weight files' headers, and stop: nothing is decomposed or written.
        align_neurons: before stacking, permute each selected expert's intermediate neurons onto the layer's most
            heavily weighted expert (Hungarian matching on weight correlations), so the decomposition does not mix
            unrelated units; recorded in the manifest.

    Returns:
        What was written (None for a dry run).
    """
    from xpert_pl.bank import format_plan, plan_extraction

    if not Path(selection).is_file():
        raise FileNotFoundError(f"selection '{selection}' not found; run `xpert analyze` first")
    if not dry_run:
        raise_if_problems(output_problems(out_dir, "bank"))
    consolidator = consolidator or TuckerConsolidator()
    # A selection made from another model is refused before any expert is read (a local safetensors source is
    # read by key, so a large one never has to fit in memory).
    chosen = read_selection(selection)
    source, fingerprint = open_checked_source(chosen, "selection", selection, model, trust_remote_code)
    if dry_run:
        print(format_plan(plan_extraction(source, selection, consolidator, group_layers)))
        problem = replace_problem(out_dir, "bank")
        fate = "would be created" if not Path(out_dir).exists() else "exists and would be replaced"
        fate = fate if problem is None else f"would be refused: {problem}"
        print(f"dry run: nothing was decomposed or written ({out_dir} {fate})")
        return None
    settings = {"source": fingerprint, "selection": chosen, "group_layers": group_layers, "align": align_neurons}
    finished = FinishedUnits(partial_directory(out_dir), {**settings, "tucker": consolidator.describe()})
    bank = extract_bank(
        source,
        selection,
        consolidator,
        source_description=source_record(fingerprint, model),
        group_layers=group_layers,
        finished=finished,
        align_neurons=align_neurons,
    )
    save_start = time.perf_counter()
    bank.save(out_dir)
    finished.discard()
    log.info("bank saved in %.1f s", time.perf_counter() - save_start)
    log.info("knowledge bank written to %s", Path(out_dir).resolve())
    return BankResult(Path(out_dir), Path(out_dir) / BANK_MANIFEST_FILE, len(bank.manifest.get("layers", [])))
