"""The knowledge bank: Tucker factors of the selected experts, saved as safetensors plus a JSON manifest.

Layout of a bank directory:
    bank.safetensors  keys `layers.{l}.{m}.core|U1|U2|U3|expert_norm` and `layers.{l}.weights`
    manifest.json     format version, source description, selection, ranks, shapes, errors, sha256 of the tensors
A bank is self-contained: initializers load it without the source model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xpert_pl.artifacts import atomic_directory, load_tensors, read_json, save_tensors, sha256_file, write_json
from xpert_pl.bank.tucker import TuckerFactors
from xpert_pl.experts import MATRICES

FORMAT = "xpert-knowledge-bank"
FORMAT_VERSION = 1
TENSORS_FILE = "bank.safetensors"
MANIFEST_FILE = "manifest.json"


class BankIntegrityError(ValueError):
    """A bank directory is missing files, or its manifest and tensors disagree."""


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
    """Per source layer: expert ids, weights (n,), and a BankEntry per matrix in MATRICES."""

    entries: dict[int, dict[str, BankEntry]]
    weights: dict[int, torch.Tensor]
    experts: dict[int, list[int]]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def source_layers(self) -> list[int]:
        """Source layer indices present in the bank, ascending."""
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
        """Manifest records per layer: selection, shapes, ranks, errors and norms."""
        records = []
        for layer in self.source_layers:
            matrices = {
                m: {
                    "shape": list(e.factors.shape),
                    "ranks": list(e.factors.ranks),
                    "relative_error": e.factors.relative_error,
                    "expert_norm": e.expert_norm,
                }
                for m, e in self.entries[layer].items()
            }
            records.append(
                {
                    "layer": layer,
                    "experts": list(self.experts[layer]),
                    "weights": self.weights[layer].tolist(),
                    "matrices": matrices,
                }
            )
        return records

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write tensors and manifest into `out_dir` atomically (a failed save leaves no directory behind)."""
        out_dir = Path(out_dir)
        with atomic_directory(out_dir) as tmp:
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
        """Load and validate a bank directory (safetensors only; checksum and shapes are checked)."""
        bank_dir = Path(bank_dir)
        manifest_path, tensors_path = bank_dir / MANIFEST_FILE, bank_dir / TENSORS_FILE
        for path in (manifest_path, tensors_path):
            if not path.is_file():
                raise BankIntegrityError(f"not a knowledge bank: {path} is missing (was the extract step completed?)")
        manifest = read_json(manifest_path)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise BankIntegrityError(
                f"{manifest_path} is not a '{FORMAT}' v{FORMAT_VERSION} manifest "
                f"(format={manifest.get('format')!r}, version={manifest.get('format_version')!r})"
            )
        digest = sha256_file(tensors_path)
        if digest != manifest.get("tensors", {}).get("sha256"):
            raise BankIntegrityError(f"checksum mismatch for {tensors_path}: the file does not match its manifest")
        return cls._from_tensors(load_tensors(tensors_path), manifest, bank_dir)

    @classmethod
    def _from_tensors(cls, tensors: dict[str, torch.Tensor], manifest: dict[str, Any], where: Path) -> KnowledgeBank:
        entries, weights, experts, expected = {}, {}, {}, set()
        for record in manifest["layers"]:
            layer = int(record["layer"])
            experts[layer] = [int(e) for e in record["experts"]]
            weights[layer] = _take(tensors, f"layers.{layer}.weights", (len(experts[layer]),), where, expected)
            entries[layer] = {
                m: _load_entry(tensors, layer, m, info, where, expected) for m, info in record["matrices"].items()
            }
        if set(tensors) != expected:
            raise BankIntegrityError(
                f"{where}: tensors and manifest disagree (unexpected keys {sorted(set(tensors) - expected)[:5]})"
            )
        return cls(entries=entries, weights=weights, experts=experts, manifest=manifest)


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
    tucker = TuckerFactors(core=core, factors=factors, ranks=ranks, relative_error=float(info["relative_error"]))
    return BankEntry(factors=tucker, expert_norm=float(norm.item()))
