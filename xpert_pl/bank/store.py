"""The knowledge bank: Tucker factors of the selected experts, saved as safetensors plus a JSON manifest.

Layout of a bank directory:
    bank.safetensors  keys `layers.{l}.{m}.core|U1|U2|U3|expert_norm` and `layers.{l}.weights`
    manifest.json     format version, source description, selection, ranks, shapes, errors, algorithms,
                      sha256 of the tensors
A bank is self-contained: initializers load it without the source model. Its manifest's `source` records the
source fingerprint (`xpert_pl.provenance`) and expert count; `load` checks each layer's expert ids (distinct, in
range of that count) and weights (finite, non-negative, summing to 1).

A bank layer `l` is normally source decoder layer `l`. A grouped bank (`extract_bank(..., group_layers=G)`) has
layers 0..G-1 instead, each built from the experts of several source layers stacked together; its
`source_groups` and the manifest's `grouping` name them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xpert_pl.artifacts import atomic_directory, load_tensors, read_json, save_tensors, sha256_file, write_json
from xpert_pl.bank.tucker import TuckerFactors
from xpert_pl.layout import BANK_MANIFEST_FILE
from xpert_pl.sources.experts import MATRICES

FORMAT = "xpert-knowledge-bank"
FORMAT_VERSION = 1
TENSORS_FILE = "bank.safetensors"
MANIFEST_FILE = BANK_MANIFEST_FILE


class BankIntegrityError(ValueError):
    """A bank directory is missing files, or its manifest and tensors disagree."""

    def __str__(self) -> str:
        return f"{super().__str__()}. Rebuild it: re-run `xpert extract` into that directory."


@dataclass
class BankEntry:
    """One (layer, matrix) of the bank: Tucker factors and the mean Frobenius norm of the selected experts."""

    factors: TuckerFactors
    expert_norm: float

    @property
    def core(self) -> torch.Tensor:
        return self.factors.core

    @property
    def U1(self) -> torch.Tensor:
        return self.factors.factors[0]

    @property
    def U2(self) -> torch.Tensor:
        return self.factors.factors[1]

    @property
    def U3(self) -> torch.Tensor:
        return self.factors.factors[2]


@dataclass
class KnowledgeBank:
    """Per bank layer: expert ids, weights (n,), and a BankEntry per matrix in MATRICES.

    Attributes:
        entries: bank layer -> matrix -> BankEntry.
        weights: bank layer -> expert weights (n,), summing to 1.
        experts: bank layer -> expert ids in stacking order (for a grouped bank, of all its source layers).
        manifest: what `save` writes besides the per-layer records (source, selection, tucker, grouping).
        source_groups: bank layer -> the source decoder layers it was built from ({l: [l]} when not grouped).
        expert_layers: bank layer -> the source decoder layer of each stacked expert (parallel to `experts`).
    """

    entries: dict[int, dict[str, BankEntry]]
    weights: dict[int, torch.Tensor]
    experts: dict[int, list[int]]
    manifest: dict[str, Any] = field(default_factory=dict)
    source_groups: dict[int, list[int]] = field(default_factory=dict)
    expert_layers: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = (set(self.source_groups) | set(self.expert_layers)) - set(self.entries)
        if unknown:
            raise ValueError(f"source_groups/expert_layers name layers {sorted(unknown)} that have no entries")
        self.source_groups = {k: list(self.source_groups.get(k, [k])) for k in self.entries}
        self.expert_layers = {k: list(self.expert_layers.get(k, [k] * len(self.experts[k]))) for k in self.entries}

    @property
    def source_layers(self) -> list[int]:
        """Bank layer indices, ascending: source decoder layers, or group indices 0..G-1 of a grouped bank."""
        return sorted(self.entries)

    @property
    def num_experts_selected(self) -> dict[int, int]:
        """Number of selected experts per source layer."""
        return {layer: len(ids) for layer, ids in sorted(self.experts.items())}

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """Matrix shape (d1, d2) per matrix name, e.g. gate/up (I x H), down (H x I)."""
        first = self.entries[self.source_layers[0]]
        return {m: tuple(first[m].factors.shape[:2]) for m in MATRICES}

    @property
    def hidden_size(self) -> int:
        return self.shapes["gate"][1]

    @property
    def intermediate_size(self) -> int:
        return self.shapes["gate"][0]

    def entry(self, layer: int, matrix: str) -> BankEntry:
        """The BankEntry of source layer `layer` and `matrix`."""
        if layer not in self.entries:
            raise KeyError(f"source layer {layer} is not in the bank (layers: {self.source_layers})")
        return self.entries[layer][matrix]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The flat safetensors dictionary."""
        out: dict[str, torch.Tensor] = {}
        for layer in self.source_layers:
            out[f"layers.{layer}.weights"] = self.weights[layer].float()
            for m, entry in self.entries[layer].items():
                prefix = f"layers.{layer}.{m}"
                out[f"{prefix}.core"] = entry.core
                for name, factor in zip(("U1", "U2", "U3"), entry.factors.factors, strict=True):
                    out[f"{prefix}.{name}"] = factor
                out[f"{prefix}.expert_norm"] = torch.tensor([entry.expert_norm], dtype=torch.float32)
        return out

    def layer_records(self) -> list[dict[str, Any]]:
        """Manifest records per layer: source layers, selection, shapes, ranks, errors, algorithms and norms."""
        return [
            {
                "layer": layer,
                "source_layers": list(self.source_groups[layer]),
                "experts": list(self.experts[layer]),
                "expert_layers": list(self.expert_layers[layer]),
                "weights": self.weights[layer].tolist(),
                "matrices": {m: _entry_record(e) for m, e in self.entries[layer].items()},
            }
            for layer in self.source_layers
        ]

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write tensors and manifest into `out_dir` atomically (a failed save leaves no directory behind)."""
        out_dir = Path(out_dir)
        with atomic_directory(out_dir, "bank") as tmp:
            save_tensors(tmp / TENSORS_FILE, self.tensors(), metadata={"format": FORMAT})
            manifest = {
                **{k: v for k, v in self.manifest.items() if k not in ("layers", "tensors")},
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "matrices": list(MATRICES),
                "shapes": {m: list(s) for m, s in self.shapes.items()},
                "layers": self.layer_records(),
                "tensors": {"file": TENSORS_FILE, "sha256": sha256_file(tmp / TENSORS_FILE)},
            }
            write_json(tmp / MANIFEST_FILE, manifest)
        self.manifest = manifest
        return out_dir

    @classmethod
    def load(cls, bank_dir: str | os.PathLike) -> KnowledgeBank:
        """Load and validate a bank directory (safetensors only; checksum, shapes, expert ids and weights checked)."""
        bank_dir = Path(bank_dir)
        manifest_path, tensors_path = bank_dir / MANIFEST_FILE, bank_dir / TENSORS_FILE
        for path in (manifest_path, tensors_path):
            if not path.is_file():
                raise BankIntegrityError(f"not a knowledge bank: {path} is missing (was the extract step completed?)")
        manifest = read_json(manifest_path)
        if not isinstance(manifest, dict):
            raise BankIntegrityError(f"{manifest_path} holds a {type(manifest).__name__}, not a bank manifest")
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise BankIntegrityError(
                f"{manifest_path} is not a '{FORMAT}' v{FORMAT_VERSION} manifest "
                f"(format={manifest.get('format')!r}, version={manifest.get('format_version')!r})"
            )
        digest = sha256_file(tensors_path)
        recorded = manifest.get("tensors")
        if not isinstance(recorded, dict) or digest != recorded.get("sha256"):
            raise BankIntegrityError(
                f"checksum mismatch for {tensors_path}: the file does not match its manifest (corrupt or truncated)"
            )
        try:
            return cls._from_tensors(load_tensors(tensors_path), manifest, bank_dir)
        except BankIntegrityError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise BankIntegrityError(f"{manifest_path}: malformed manifest ({type(err).__name__}: {err})") from err

    @classmethod
    def _from_tensors(cls, tensors: dict[str, torch.Tensor], manifest: dict[str, Any], where: Path) -> KnowledgeBank:
        entries, weights, experts, groups, expert_layers, expected = {}, {}, {}, {}, {}, set()
        num_experts = (manifest.get("source") or {}).get("num_experts")
        for record in manifest["layers"]:
            layer = int(record["layer"])
            experts[layer] = [int(e) for e in record["experts"]]
            # Manifests written before layer grouping existed have neither key: one source layer per bank layer.
            groups[layer] = [int(s) for s in record.get("source_layers", [layer])]
            expert_layers[layer] = [int(s) for s in record.get("expert_layers", [layer] * len(experts[layer]))]
            _check_sources(layer, experts[layer], groups[layer], expert_layers[layer], where)
            weights[layer] = _take(tensors, f"layers.{layer}.weights", (len(experts[layer]),), where, expected)
            _check_choice(layer, experts[layer], expert_layers[layer], num_experts, where / MANIFEST_FILE)
            _check_weights(layer, weights[layer], where / TENSORS_FILE)
            entries[layer] = {
                m: _load_entry(tensors, layer, m, info, where, expected) for m, info in record["matrices"].items()
            }
        if set(tensors) != expected:
            raise BankIntegrityError(
                f"{where}: tensors and manifest disagree (unexpected keys {sorted(set(tensors) - expected)[:5]})"
            )
        _check_grouping(manifest.get("grouping"), groups, where)
        return cls(
            entries=entries,
            weights=weights,
            experts=experts,
            manifest=manifest,
            source_groups=groups,
            expert_layers=expert_layers,
        )


def _entry_record(entry: BankEntry) -> dict[str, Any]:
    """Manifest record of one (layer, matrix): shape, ranks, error, algorithm, norm (and energy if it chose ranks)."""
    factors = entry.factors
    record = {
        "shape": list(factors.shape),
        "ranks": list(factors.ranks),
        "relative_error": factors.relative_error,
        "algorithm": factors.algorithm,
        "expert_norm": entry.expert_norm,
    }
    if factors.energy is not None:
        record["energy"] = factors.energy
        record["mode_energy"] = factors.mode_energy
    return record


def _check_sources(layer: int, experts: list[int], groups: list[int], expert_layers: list[int], where: Path) -> None:
    """A layer record's source layers and per-expert source layers must agree with each other and its experts."""
    if not groups or len(expert_layers) != len(experts) or not set(expert_layers) <= set(groups):
        raise BankIntegrityError(
            f"{where}: layer {layer} lists experts {experts} from layers {expert_layers}, "
            f"which do not match its source layers {groups}"
        )


def _check_choice(
    layer: int, experts: list[int], expert_layers: list[int], num_experts: int | None, where: Path
) -> None:
    """Expert ids must be distinct (per source layer, in a grouped bank) and in [0, the source's expert count)."""
    bound = f"[0, {num_experts})" if num_experts else "[0, ...)"
    bad = [e for e in experts if e < 0 or (num_experts and e >= int(num_experts))]
    if bad:
        raise BankIntegrityError(
            f"{where}: layer {layer} names expert ids {bad} out of range {bound} (the source's expert count)"
        )
    pairs = list(zip(expert_layers, experts, strict=True))
    if len(set(pairs)) != len(pairs):
        raise BankIntegrityError(f"{where}: layer {layer} names an expert twice: experts {experts} of {expert_layers}")


def _check_weights(layer: int, weights: torch.Tensor, where: Path, tolerance: float = 1e-5) -> None:
    """A layer's expert weights must be finite, non-negative and sum to 1 (they mix the experts)."""
    values = weights.double()
    finite = bool(torch.isfinite(values).all())
    if not finite or bool((values < 0).any()) or abs(float(values.sum()) - 1.0) > tolerance:
        raise BankIntegrityError(
            f"{where}: layer {layer} has expert weights {weights.tolist()}; they must be finite, non-negative "
            f"and sum to 1 (within {tolerance:g})"
        )


def _check_grouping(grouping: dict[str, Any] | None, groups: dict[int, list[int]], where: Path) -> None:
    """A grouped bank's manifest `grouping` must name layers 0..G-1 and the same source layers as the records."""
    if grouping is None:
        return
    expected = [groups.get(g) for g in range(int(grouping["groups"]))]
    if sorted(groups) != list(range(int(grouping["groups"]))) or grouping["source_layers"] != expected:
        raise BankIntegrityError(
            f"{where}: grouping {grouping} does not match the layer records' source layers {groups}"
        )


def _take(tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], where: Path, seen: set[str]):
    """tensors[key], checked against the shape the manifest promises."""
    if key not in tensors:
        raise BankIntegrityError(f"{where}: tensor '{key}' listed by the manifest is missing")
    if tuple(tensors[key].shape) != tuple(shape):
        actual = tuple(tensors[key].shape)
        raise BankIntegrityError(f"{where}: tensor '{key}' has shape {actual}, the manifest says {tuple(shape)}")
    seen.add(key)
    return tensors[key]


def _load_entry(tensors, layer: int, matrix: str, info: dict[str, Any], where: Path, seen: set[str]) -> BankEntry:
    prefix = f"layers.{layer}.{matrix}"
    dims, ranks = [int(d) for d in info["shape"]], tuple(int(r) for r in info["ranks"])
    core = _take(tensors, f"{prefix}.core", ranks, where, seen)
    factors = [_take(tensors, f"{prefix}.U{i + 1}", (dims[i], ranks[i]), where, seen) for i in range(3)]
    norm = _take(tensors, f"{prefix}.expert_norm", (1,), where, seen)
    tucker = TuckerFactors(
        core=core,
        factors=factors,
        ranks=ranks,
        relative_error=float(info["relative_error"]),
        algorithm=info.get("algorithm", "hooi"),  # banks written before the fast path existed used HOOI
        energy=info.get("energy"),
        mode_energy=info.get("mode_energy"),
    )
    return BankEntry(factors=tucker, expert_norm=float(norm.item()))
