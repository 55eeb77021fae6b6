"""Choosing, per layer, the experts whose weights initialise a dense student.

The JSON that `Selection.save` writes is a fixed schema read by the bank extractor:
`{"strategy", "n", "num_experts", "top_k", "domains", "score", "layers": [{"layer", "experts", "weights",
"scores"}]}`, plus `source` (`{"fingerprint", "model"}`, see `xpert_pl.provenance`) when the analysis recorded
which model it was made from. A strategy may add optional per-layer keys after these (e.g. `domain` for a specialist,
`weights_note` when frequency weights fell back to uniform); readers ignore keys they do not know.

This module holds the schema, the `ExpertSelector` interface, the helpers every strategy shares and the XPERT
default `ConsistentExpertSelector`; the other strategies live in `xpert_pl.analysis.strategies` (and are exported
by `xpert_pl.analysis`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from xpert_pl.analysis.counter import ActivationCounts
from xpert_pl.artifacts import read_json, write_json

SELECTION_KEYS = ("strategy", "n", "num_experts", "top_k", "domains", "score", "layers")
LAYER_KEYS = ("layer", "experts", "weights", "scores")
WEIGHTINGS = ("frequency", "uniform")
Weighting = Literal["frequency", "uniform"]

__all__ = [
    "LAYER_KEYS",
    "SELECTION_KEYS",
    "ConsistentExpertSelector",
    "ExpertSelector",
    "LayerSelection",
    "Selection",
]


@dataclass
class LayerSelection:
    """The experts chosen in one layer.

    Attributes:
        layer: source layer index.
        experts: selected expert ids, best first.
        weights: mixing weight of each selected expert (same order as `experts`), summing to 1.
        scores: the score of every expert (length E), so the file shows why these were chosen.
        extra: optional strategy-specific fields, written after the schema keys and never replacing them.
    """

    layer: int
    experts: list[int]
    weights: list[float]
    scores: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.extra) & set(LAYER_KEYS))
        if clash:
            raise ValueError(f"extra per-layer fields must not reuse schema keys: {clash}")

    def to_dict(self) -> dict[str, Any]:
        """The layer's JSON object: the schema keys in schema order, then the extra fields."""
        schema = {"layer": self.layer, "experts": self.experts, "weights": self.weights, "scores": self.scores}
        return {**schema, **self.extra}


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
    source: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the schema (what `save` writes and the bank extractor reads)."""
        data = {key: getattr(self, key) for key in SELECTION_KEYS}
        data["domains"] = list(self.domains)
        data["layers"] = [layer.to_dict() for layer in self.layers]
        if self.source is not None:
            data["source"] = dict(self.source)
        return data

    def save(self, path: str | Path) -> None:
        """Write the selection as JSON, atomically."""
        write_json(path, self.to_dict())

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
                {k: v for k, v in x.items() if k not in LAYER_KEYS},
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
            source=data.get("source"),
        )


class ExpertSelector(abc.ABC):
    """Turns routing statistics into a per-layer expert selection.

    Subclasses take `n` (experts per layer, None = the source's top_k) and keep every constructor argument as a
    public attribute of the same name: `describe` reports them and `with_n` rebuilds the selector from them.
    """

    n: int | None

    @abc.abstractmethod
    def select(self, counts: ActivationCounts) -> Selection:
        """Choose experts in every layer of `counts`."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (class and constructor arguments) for manifests and reports."""
        return {"class": type(self).__name__, **self._init_args()}

    def with_n(self, n: int) -> ExpertSelector:
        """A new selector of the same class and arguments that keeps `n` experts per layer (validated anew)."""
        return type(self)(**{**self._init_args(), "n": n})

    def _init_args(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def check_n(n: int | None) -> int | None:
    """Validate a selector's `n` at construction (its upper bound, num_experts, is checked by `resolve_n`)."""
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 (or None for the source's top_k), got {n}")
    return n


def check_weighting(weighting: str) -> Weighting:
    """Validate a selector's `weighting`."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be 'frequency' or 'uniform', got '{weighting}'")
    return weighting  # type: ignore[return-value]


def resolve_n(n: int | None, counts: ActivationCounts) -> int:
    """`n`, or the source's top_k when None; raises unless 1 <= n <= num_experts."""
    n = counts.top_k if n is None else n
    if not 1 <= n <= counts.num_experts:
        raise ValueError(f"n must be between 1 and num_experts={counts.num_experts}, got {n}")
    return n


def scored_frequency(counts: ActivationCounts, domains: list[str] | None = None) -> torch.Tensor:
    """f[L, D, E] (DESIGN.md, step 1); raises if one of `domains` (default: all) counted no tokens."""
    needed = counts.domains if domains is None else domains
    tokens = dict(zip(counts.domains, counts.tokens.tolist(), strict=True))
    empty = [d for d in needed if tokens[d] == 0]
    if empty:
        raise ValueError(f"domains with no tokens counted cannot be scored: {empty}")
    return counts.frequency()


def ranked_selection(
    counts: ActivationCounts,
    n: int,
    order: torch.Tensor,
    scores: torch.Tensor,
    basis: torch.Tensor,
    weighting: Weighting,
    extra: dict[str, Any] | None = None,
) -> list[LayerSelection]:
    """Per layer, the n experts first in `order`, weighted by `basis`.

    Args:
        counts: the statistics (only its layer count is used).
        n: experts kept per layer.
        order: (L, E) or (L, E, K) sort keys, smallest first; later keys break ties of earlier ones and the
            expert id breaks any tie left, so every strategy is deterministic.
        scores: (L, E) the strategy's score of every expert, written to `scores`.
        basis: (L, E) non-negative mass that `frequency` weighting normalises over the selected set.
        weighting: `frequency` (by `basis`) or `uniform` (1/n each).
        extra: fields added to every layer's JSON object.
    """
    keys = order.unsqueeze(-1) if order.dim() == 2 else order
    # Equal frequencies computed along different float paths (a mean of .3 and .3 vs .2 and .4) differ in the
    # last bit; rounding makes such mathematical ties fall to the documented tie-break instead.
    keys = torch.round(keys.to(torch.float64), decimals=12)
    layers = []
    for layer in range(counts.num_layers):
        rows = keys[layer].tolist()
        experts = sorted(range(len(rows)), key=lambda e: (*rows[e], e))[:n]
        weights, note = _weights([float(basis[layer, e]) for e in experts], weighting)
        fields = {**(extra or {}), **({"weights_note": note} if note else {})}
        layers.append(LayerSelection(counts.layer_indices[layer], experts, weights, scores[layer].tolist(), fields))
    return layers


def _weights(mass: list[float], weighting: Weighting) -> tuple[list[float], str | None]:
    """Mixing weights of the selected experts, and a note when frequency weighting had to fall back to uniform."""
    n, total = len(mass), sum(mass)
    if weighting == "uniform":
        return [1.0 / n] * n, None
    if total <= 0:  # the selected experts were never routed to: there is no frequency to weight by
        return [1.0 / n] * n, "uniform: the selected experts have zero routing frequency"
    return [m / total for m in mass], None


def make_selection(
    counts: ActivationCounts, strategy: str, n: int, score: str, layers: list[LayerSelection]
) -> Selection:
    """A `Selection` carrying the source's sizes and domains."""
    return Selection(
        strategy=strategy,
        n=n,
        num_experts=counts.num_experts,
        top_k=counts.top_k,
        domains=list(counts.domains),
        layers=layers,
        score=score,
    )


class ConsistentExpertSelector(ExpertSelector):
    """Experts that every domain uses: score s_l(e) = E * min_d f_{l,d}(e) (DESIGN.md, step 2).

    A score of 1.0 means "at least its uniform share of routing in every domain". The n highest-scoring experts
    are kept per layer; ties go to the higher mean frequency over domains, then to the lower expert id.
    """

    SCORE = "E * min_d f_{l,d}(e), f = top-k routing frequency (1.0 = at least the uniform share in every domain)"

    def __init__(self, n: int | None = None, weighting: Weighting = "frequency"):
        """
        Args:
            n: experts kept per layer; None keeps the source's top_k.
            weighting: `frequency` weights experts by their mean routing frequency (normalised over the selected
                set); `uniform` gives each 1/n.
        """
        self.n = check_n(n)
        self.weighting = check_weighting(weighting)

    def select(self, counts: ActivationCounts) -> Selection:
        n = resolve_n(self.n, counts)
        freq = scored_frequency(counts)  # (L, D, E)
        scores = counts.num_experts * freq.min(dim=1).values
        mean_freq = freq.mean(dim=1)
        order = torch.stack([-scores, -mean_freq], dim=-1)
        layers = ranked_selection(counts, n, order, scores, mean_freq, self.weighting)
        return make_selection(counts, "consistent", n, self.SCORE, layers)
