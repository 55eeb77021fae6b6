"""Build a knowledge bank from a source MoE and a selection (DESIGN.md sections 2-3), or plan one (dry run).

Depth grouping (DESIGN.md section 5, "group the source layers ... into one tensor before Tucker"): with
`group_layers=G` the selected layers, ascending, are split into G contiguous near-equal groups (as
`numpy.array_split`); each group's selected experts are stacked along the expert mode and decomposed once, and
the bank's layers are the group indices 0..G-1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from xpert_pl.artifacts import read_json
from xpert_pl.bank.align import NeuronAlignedStack
from xpert_pl.bank.store import BankEntry, KnowledgeBank
from xpert_pl.bank.tucker import TuckerConsolidator
from xpert_pl.provenance import check_same_source, recorded_source, source_fingerprint
from xpert_pl.resume import FinishedUnits
from xpert_pl.sources.checkpoint import CheckpointExperts
from xpert_pl.sources.experts import MATRICES
from xpert_pl.sources.reader import ExpertReader, expert_reader

log = logging.getLogger(__name__)

# Upper bound of one tensor's entry in the safetensors JSON header (name, dtype, shape, offsets).
_HEADER_BYTES_PER_TENSOR = 160


def read_selection(selection: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """The selection dict, from a path to `selection.json` or an already loaded dict; ValueError if malformed."""
    where = "the selection" if isinstance(selection, dict) else str(selection)
    if not isinstance(selection, dict):
        selection = read_json(selection)
    layers = selection.get("layers") if isinstance(selection, dict) else None
    if not isinstance(layers, list) or not all(isinstance(r, dict) and "layer" in r and "experts" in r for r in layers):
        raise ValueError(
            f"{where} is not an expert selection: expected {{'layers': [{{'layer': int, 'experts': [int, ...], "
            "'weights': [...]}, ...]}} as `xpert analyze` writes it to selection.json"
        )
    return selection


def group_source_layers(layers: Sequence[int], group_layers: int | None = None) -> dict[int, list[int]]:
    """Bank layer -> the source layers it is built from.

    Without grouping every layer is its own bank layer ({l: [l]}). With `group_layers=G` the layers, ascending,
    are split into G contiguous groups whose sizes differ by at most one, the larger ones first (as
    `numpy.array_split`), keyed 0..G-1: 5 layers in 2 groups give {0: [l0, l1, l2], 1: [l3, l4]}.
    """
    layers = sorted(layers)
    if group_layers is None:
        return {layer: [layer] for layer in layers}
    if isinstance(group_layers, bool) or not 1 <= group_layers <= len(layers):
        raise ValueError(
            f"group_layers must lie in [1, {len(layers)}] (the number of selected layers {layers}), got {group_layers}"
        )
    size, extra = divmod(len(layers), group_layers)
    groups, start = {}, 0
    for group in range(group_layers):
        stop = start + size + (1 if group < extra else 0)
        groups[group] = layers[start:stop]
        start = stop
    return groups


@dataclass
class _LayerChoice:
    """The selected experts of one source layer and their weights (float64, summing to 1)."""

    experts: list[int]
    weights: torch.Tensor


def _checked_weights(record: dict[str, Any], num_experts: int) -> torch.Tensor:
    """The record's expert weights as a float64 tensor, validated and renormalised to sum to exactly 1."""
    ids, weights = record["experts"], record.get("weights")
    layer = record["layer"]
    if not ids or len(set(ids)) != len(ids) or any(not 0 <= e < num_experts for e in ids):
        raise ValueError(f"selection layer {layer}: experts {ids} must be distinct ids in [0, {num_experts})")
    if weights is None:  # no weights given: uniform
        weights = [1.0] * len(ids)
    numbers = isinstance(weights, list) and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights
    )
    if not numbers or len(weights) != len(ids) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"selection layer {layer}: weights {weights} must be {len(ids)} non-negative numbers")
    w = torch.tensor(weights, dtype=torch.float64)
    return w / w.sum()


def _expert_ids(record: dict[str, Any], num_experts: int) -> list[int]:
    experts = record["experts"]
    if not isinstance(experts, list) or not experts or not all(_is_int(e) and 0 <= e < num_experts for e in experts):
        raise ValueError(
            f"selection layer {record['layer']}: experts {experts!r} must be distinct ids in [0, {num_experts})"
        )
    return [int(e) for e in experts]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_selection(selection: dict[str, Any], num_experts: dict[int, int]) -> dict[int, _LayerChoice]:
    """Source layer -> its validated choice, ascending; unknown or repeated layers raise ValueError."""
    chosen: dict[int, _LayerChoice] = {}
    for record in selection["layers"]:
        layer = record["layer"]
        if not _is_int(layer) or layer not in num_experts:
            raise ValueError(f"selection names layer {layer} but the source's MoE layers are {sorted(num_experts)}")
        if layer in chosen:
            raise ValueError(f"selection names layer {layer} more than once")
        ids = _expert_ids(record, num_experts[layer])
        chosen[layer] = _LayerChoice(ids, _checked_weights(record, num_experts[layer]))
    if not chosen:
        raise ValueError("the selection has no layers")
    return dict(sorted(chosen.items()))


class LayerClock:
    """Seconds of one bank layer split into reading (read, convert to float32, check, norm), the Tucker
    decompositions and writing (keeping the finished layer), for the manifest's `timings` and the progress log."""

    def __init__(self) -> None:
        self.seconds = {"read": 0.0, "tucker": 0.0, "write": 0.0}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def record(self, key: int, layers: list[int], resumed: bool) -> dict[str, Any]:
        """The manifest record: {layer, source_layers, read/tucker/write_seconds, seconds, resumed}."""
        parts = {f"{name}_seconds": round(value, 4) for name, value in self.seconds.items()}
        return {"layer": key, "source_layers": layers, **parts, "seconds": round(self.total, 4), "resumed": resumed}


def _consolidate(
    reader: ExpertReader,
    chosen: dict[int, _LayerChoice],
    layers: list[int],
    matrix: str,
    consolidator: TuckerConsolidator,
    clock: LayerClock,
) -> BankEntry:
    """Stack the chosen experts of `layers` for `matrix` along the expert mode and Tucker-decompose them."""
    with clock.part("read"):
        parts = [reader.stack(layer, chosen[layer].experts, matrix) for layer in layers]
        stacked = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # one layer: no copy
        # Mean Frobenius norm of the stacked experts: the default rescaling target of the collapse.
        norm = float(torch.linalg.vector_norm(stacked, dim=(0, 1), dtype=torch.float64).mean())
    with clock.part("tucker"):
        factors = consolidator.decompose(stacked)
    return BankEntry(factors=factors, expert_norm=norm)


def progress_line(done: int, total: int, key: int, clock: LayerClock, elapsed: float) -> str:
    """`layer 3/16: 4.1 s (read 0.6, tucker 3.2, write 0.3); ETA 52 s`: the ETA assumes the mean pace so far."""
    parts = ", ".join(f"{name} {value:.1f}" for name, value in clock.seconds.items())
    eta = elapsed / done * (total - done)
    return f"layer {done}/{total} (bank layer {key}): {clock.total:.1f} s ({parts}); ETA {eta:.0f} s"


def extract_bank(
    source: nn.Module | CheckpointExperts,
    selection: str | os.PathLike | dict[str, Any],
    consolidator: TuckerConsolidator,
    source_description: dict[str, Any] | None = None,
    progress: bool = True,
    group_layers: int | None = None,
    finished: FinishedUnits | None = None,
    align_neurons: bool = False,
) -> KnowledgeBank:
    """Stack the selected experts of every selected layer (or layer group), per matrix, and Tucker-decompose them.

    Args:
        source: the source MoE of a supported family (see `xpert_pl.sources.families`): a live Hugging Face model, or a
            `CheckpointExperts` that reads only the selected experts from its safetensors files.
        selection: path to `selection.json` or its dict (schema: strategy, n, ..., layers[{layer, experts, weights}]);
            `layer` is the decoder layer index (dense layers of e.g. DeepSeek cannot be selected).
        consolidator: the Tucker settings.
        source_description: JSON-able description of the source (e.g. the builder's `describe()`), stored in
            the manifest next to the model's config summary and its source `fingerprint` (`xpert_pl.provenance`).
            A selection that records a source fingerprint must match the source's (SourceMismatchError).
        progress: show a tqdm bar over layers (a log line per layer gives its seconds and the ETA regardless).
        group_layers: G groups of contiguous selected layers (see `group_source_layers`), each decomposed as one
            stack of all its layers' experts; the group's weights are its layers' weights divided by the number
            of layers (so they sum to 1), and the bank's layers are 0..G-1. None: one bank layer per source layer.
        finished: where each bank layer is kept as soon as it is decomposed; layers found there (made with the
            same settings, see `FinishedUnits`) are not decomposed again.
        align_neurons: permute each selected expert's intermediate neurons onto the layer's most heavily weighted
            expert before stacking (`xpert_pl.bank.align`); recorded in the manifest with the mean matched
            correlation before and after.

    The manifest's `timings` holds per bank layer the seconds spent reading (and converting) the experts, in
    the Tucker decompositions and writing the finished layer (`LayerClock`).
    """
    selection = read_selection(selection)
    description = _checked_description(source, selection, source_description)
    reader = expert_reader(source)
    chosen = _checked_selection(selection, reader.num_experts)
    aligned = None
    if align_neurons:
        reference = {layer: choice.experts[int(choice.weights.argmax())] for layer, choice in chosen.items()}
        aligned = NeuronAlignedStack(reader.stack, reference)
        reader = dataclasses.replace(reader, stack=aligned)
    groups = group_source_layers(list(chosen), group_layers)
    entries, weights, experts, expert_layers, timings = {}, {}, {}, {}, []
    start = time.perf_counter()
    for done, (key, layers) in enumerate(tqdm(groups.items(), desc="extract bank", unit="layer", disable=not progress)):
        experts[key] = [e for layer in layers for e in chosen[layer].experts]
        expert_layers[key] = [layer for layer in layers for _ in chosen[layer].experts]
        weights[key] = (torch.cat([chosen[layer].weights for layer in layers]) / len(layers)).float()
        made = (weights[key], experts[key], expert_layers[key])
        clock = LayerClock()
        entries[key], resumed = _layer_entries(key, layers, reader, chosen, consolidator, finished, made, clock)
        timings.append(clock.record(key, layers, resumed))
        log.info(progress_line(done + 1, len(groups), key, clock, time.perf_counter() - start))
    grouping = None if group_layers is None else {"groups": len(groups), "source_layers": list(groups.values())}
    manifest = {
        "source": {**reader.summary, **description},
        "selection": selection,
        "tucker": consolidator.describe(),
        "grouping": grouping,
        "align_neurons": None if aligned is None else {"reference": aligned.reference, "correlation": aligned.record},
        "timings": {"layers": timings, "seconds": round(time.perf_counter() - start, 4)},
    }
    return KnowledgeBank(
        entries=entries,
        weights=weights,
        experts=experts,
        manifest=manifest,
        source_groups=groups,
        expert_layers=expert_layers,
    )


def _checked_description(
    source: nn.Module | CheckpointExperts, selection: dict[str, Any], source_description: dict[str, Any] | None
) -> dict[str, Any]:
    """The manifest's source description with the source's own fingerprint (whatever the description says);
    SourceMismatchError if the selection records another source (one that records none is the caller's own)."""
    description = {"model": None, **(source_description or {}), "fingerprint": source_fingerprint(source)}
    record = recorded_source(selection)
    if record is not None:
        model = str(description.get("model") or type(source).__name__)
        check_same_source(record, "selection", "given to extract_bank", model, description["fingerprint"])
    return description


def _layer_entries(
    key: int,
    layers: list[int],
    reader: ExpertReader,
    chosen: dict[int, _LayerChoice],
    consolidator: TuckerConsolidator,
    finished: FinishedUnits | None,
    made: tuple[torch.Tensor, list[int], list[int]],
    clock: LayerClock,
) -> tuple[dict[str, BankEntry], bool]:
    """The BankEntry per matrix of bank layer `key` and whether an earlier run made it: from `finished` if so
    (its load timed as reading), else decomposed (and then kept in `finished` with `made`: the layer's expert
    weights, expert ids and their source layers)."""
    name = f"layer{key}"
    if finished is not None and finished.has(name):
        log.info("bank layer %d: decomposed by an earlier run (%s)", key, finished.path(name))
        with clock.part("read"):
            return KnowledgeBank.load(finished.path(name)).entries[key], True
    entries = {m: _consolidate(reader, chosen, layers, m, consolidator, clock) for m in MATRICES}
    if finished is not None:
        weights, experts, expert_layers = made
        unit = KnowledgeBank({key: entries}, {key: weights}, {key: experts}, {}, {key: layers}, {key: expert_layers})
        with clock.part("write"):
            unit.save(finished.path(name))
    return entries, False


@dataclass
class PlannedDecomposition:
    """One (bank layer, matrix) decomposition of a planned extraction, from shapes alone.

    Attributes:
        layer: the bank layer (source layer, or group index of a grouped bank).
        source_layers: the source layers stacked into it.
        matrix: gate, up or down.
        shape: the stacked tensor's (d1, d2, n).
        ranks: resolved ranks; for energy-chosen modes (`energy_modes`) the mode size, an upper bound.
        energy_modes: modes whose rank the energy threshold will choose.
        energy: the threshold, if any.
        algorithm: what the consolidator runs for this shape (`hooi` or `hosvd`).
        working_bytes: estimated peak working memory of the decomposition.
        bank_bytes: bytes of this entry's tensors in the bank file (upper bound with energy-chosen ranks).
    """

    layer: int
    source_layers: list[int]
    matrix: str
    shape: tuple[int, int, int]
    ranks: tuple[int, int, int]
    energy_modes: list[int]
    energy: float | None
    algorithm: str
    working_bytes: int
    bank_bytes: int


def plan_extraction(
    source: nn.Module | CheckpointExperts,
    selection: str | os.PathLike | dict[str, Any],
    consolidator: TuckerConsolidator,
    group_layers: int | None = None,
) -> list[PlannedDecomposition]:
    """What `extract_bank` would decompose, validated the same way, reading matrix shapes only (no weights)."""
    reader = expert_reader(source)
    chosen = _checked_selection(read_selection(selection), reader.num_experts)
    plan = []
    for key, layers in group_source_layers(list(chosen), group_layers).items():
        n = sum(len(chosen[layer].experts) for layer in layers)
        for matrix in MATRICES:
            shapes = {reader.matrix_shape(layer, matrix) for layer in layers}
            if len(shapes) != 1:
                raise ValueError(f"layers {layers} cannot be stacked: their {matrix} matrices have shapes {shapes}")
            shape = (*shapes.pop(), n)
            plan.append(_planned(key, layers, matrix, shape, consolidator))
    return plan


def _planned(
    key: int, layers: list[int], matrix: str, shape: tuple[int, int, int], consolidator: TuckerConsolidator
) -> PlannedDecomposition:
    """The plan row of one decomposition: ranks, algorithm and memory estimates for `shape`."""
    ranks = consolidator.rank_bounds(shape)
    algorithm = consolidator.choose_algorithm(shape)
    return PlannedDecomposition(
        layer=key,
        source_layers=layers,
        matrix=matrix,
        shape=shape,
        ranks=ranks,
        energy_modes=consolidator.energy_modes,
        energy=consolidator.energy,
        algorithm=algorithm,
        working_bytes=working_bytes(shape, algorithm),
        bank_bytes=entry_bytes(shape, ranks),
    )


def working_bytes(shape: Sequence[int], algorithm: str) -> int:
    """Estimated peak memory of one decomposition.

    The float32 stack, its copy in the working dtype (float64 for HOOI; ST-HOSVD works on the float32 stack
    itself), one unfolding or projection of the same size, and the largest Gram matrix with its eigenvectors.
    """
    numel, item = math.prod(shape), 4 if algorithm == "hosvd" else 8
    copy = 0 if algorithm == "hosvd" else item * numel
    return 4 * numel + copy + item * numel + 2 * item * max(shape) ** 2


def entry_bytes(shape: Sequence[int], ranks: Sequence[int]) -> int:
    """float32 bytes of one bank entry: core, U1, U2, U3 and expert_norm, with their safetensors header entries."""
    elements = math.prod(ranks) + sum(d * r for d, r in zip(shape, ranks, strict=True)) + 1
    return 4 * elements + 5 * _HEADER_BYTES_PER_TENSOR


def bank_file_bytes(plan: list[PlannedDecomposition]) -> int:
    """Bytes of the bank file a plan writes: its entries, each bank layer's weights (n float32), the metadata."""
    layers = {p.layer: p.shape[2] for p in plan}
    weights = sum(4 * n + _HEADER_BYTES_PER_TENSOR for n in layers.values())
    return sum(p.bank_bytes for p in plan) + weights + 128  # 128: length prefix and format metadata


def format_plan(plan: list[PlannedDecomposition]) -> str:
    """The dry-run table: one row per decomposition, then totals."""
    header = ("layer", "sources", "matrix", "stacked d1 x d2 x n", "ranks", "algorithm", "working mem", "bank")
    rows = [header] + [_plan_cells(p) for p in plan]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    bound = "<= " if any(p.energy_modes for p in plan) else "~"
    lines.append(
        f"total: {len(plan)} decompositions in {len({p.layer for p in plan})} bank layers; peak working memory "
        f"{_size(max(p.working_bytes for p in plan))} (one decomposition at a time); "
        f"bank file {bound}{_size(bank_file_bytes(plan))}"
    )
    return "\n".join(lines)


def _plan_cells(p: PlannedDecomposition) -> tuple[str, ...]:
    """The table cells of one plan row."""
    ranks = [f"<= {r} (energy >= {p.energy:g})" if mode in p.energy_modes else str(r) for mode, r in enumerate(p.ranks)]
    sources = ",".join(str(layer) for layer in p.source_layers)
    shape = " x ".join(str(d) for d in p.shape)
    return (
        str(p.layer),
        sources,
        p.matrix,
        shape,
        " x ".join(ranks),
        p.algorithm,
        _size(p.working_bytes),
        _size(p.bank_bytes),
    )


def _size(num_bytes: int) -> str:
    """Human-readable binary size: 512 B, 1.5 KiB, 3.2 GiB."""
    if num_bytes < 1024:
        return f"{num_bytes} B"
    value, unit = num_bytes / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"
