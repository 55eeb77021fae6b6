"""Choosing, per layer, the commonly-activated experts whose weights initialise a dense student.

The JSON that `Selection.save` writes is a fixed schema read by the bank extractor:
`{"strategy", "n", "num_experts", "top_k", "domains", "score", "layers": [{"layer", "experts", "weights",
"scores"}]}`.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from xpert_pl.analysis.counter import ActivationCounts
from xpert_pl.artifacts import read_json, write_json

SELECTION_KEYS = ("strategy", "n", "num_experts", "top_k", "domains", "score", "layers")
LAYER_KEYS = ("layer", "experts", "weights", "scores")


@dataclass
class LayerSelection:
    """The experts chosen in one layer.

    Attributes:
        layer: source layer index.
        experts: selected expert ids, best first.
        weights: mixing weight of each selected expert (same order as `experts`), summing to 1.
        scores: the score of every expert (length E), so the file shows why these were chosen.
    """

    layer: int
    experts: list[int]
    weights: list[float]
    scores: list[float]


@dataclass
class Selection:
    """Per-layer expert selection of a source MoE (see the module docstring for the JSON schema)."""

    strategy: str
    n: int
    num_experts: int
    top_k: int
    domains: list[str]
    layers: list[LayerSelection]
    score: str

    def save(self, path: str | Path) -> None:
        """Write the selection as JSON, atomically."""
        data = asdict(self)
        write_json(path, {key: data[key] for key in SELECTION_KEYS})

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        """Read a selection JSON; raises ValueError if a schema key is missing."""
        data = read_json(path)
        missing = [k for k in SELECTION_KEYS if k not in data]
        missing += [f"layers[].{k}" for layer in data.get("layers", []) for k in LAYER_KEYS if k not in layer]
        if missing:
            raise ValueError(f"{path} is not a selection file; missing keys: {sorted(set(missing))}")
        layers = [
            LayerSelection(
                int(x["layer"]),
                [int(e) for e in x["experts"]],
                [float(w) for w in x["weights"]],
                [float(s) for s in x["scores"]],
            )
            for x in data["layers"]
        ]
        return cls(
            strategy=str(data["strategy"]),
            n=int(data["n"]),
            num_experts=int(data["num_experts"]),
            top_k=int(data["top_k"]),
            domains=list(data["domains"]),
            layers=layers,
            score=str(data["score"]),
        )


class ExpertSelector(abc.ABC):
    """Turns routing statistics into a per-layer expert selection."""

    @abc.abstractmethod
    def select(self, counts: ActivationCounts) -> Selection:
        """Choose experts in every layer of `counts`."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (class and constructor arguments) for manifests and reports."""
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class ConsistentExpertSelector(ExpertSelector):
    """Experts that every domain uses: score s_l(e) = E * min_d f_{l,d}(e) (DESIGN.md, step 2).

    A score of 1.0 means "at least its uniform share of routing in every domain". The n highest-scoring experts
    are kept per layer; ties go to the higher mean frequency over domains, then to the lower expert id.
    """

    SCORE = "E * min_d f_{l,d}(e), f = top-k routing frequency (1.0 = at least the uniform share in every domain)"

    def __init__(self, n: int | None = None, weighting: Literal["frequency", "uniform"] = "frequency"):
        """
        Args:
            n: experts kept per layer; None keeps the source's top_k.
            weighting: `frequency` weights experts by their mean routing frequency (normalised over the selected
                set); `uniform` gives each 1/n.
        """
        if n is not None and n < 1:
            raise ValueError(f"n must be >= 1 (or None for the source's top_k), got {n}")
        if weighting not in ("frequency", "uniform"):
            raise ValueError(f"weighting must be 'frequency' or 'uniform', got '{weighting}'")
        self.n = n
        self.weighting = weighting

    def select(self, counts: ActivationCounts) -> Selection:
        n = counts.top_k if self.n is None else self.n
        if not 1 <= n <= counts.num_experts:
            raise ValueError(f"n must be between 1 and num_experts={counts.num_experts}, got {n}")
        empty = [d for d, t in zip(counts.domains, counts.tokens.tolist(), strict=True) if t == 0]
        if empty:
            raise ValueError(f"domains with no tokens counted cannot be scored: {empty}")
        freq = counts.frequency()  # (L, D, E)
        scores = counts.num_experts * freq.min(dim=1).values
        mean_freq = freq.mean(dim=1)
        layers = [self._select_layer(layer, scores[layer], mean_freq[layer], n) for layer in range(freq.shape[0])]
        return Selection(
            strategy="consistent",
            n=n,
            num_experts=counts.num_experts,
            top_k=counts.top_k,
            domains=list(counts.domains),
            layers=layers,
            score=self.SCORE,
        )

    def _select_layer(self, layer: int, scores: torch.Tensor, mean_freq: torch.Tensor, n: int) -> LayerSelection:
        s, m = scores.tolist(), mean_freq.tolist()
        ranked = sorted(range(len(s)), key=lambda e: (-s[e], -m[e], e))
        experts = ranked[:n]
        mass = sum(m[e] for e in experts)
        # An all-zero selected set (n larger than the experts ever used) has no frequency to weight by.
        uniform = self.weighting == "uniform" or mass <= 0
        weights = [1.0 / n] * n if uniform else [m[e] / mass for e in experts]
        return LayerSelection(layer=layer, experts=experts, weights=weights, scores=s)
