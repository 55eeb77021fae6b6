"""Aligning the selected experts' intermediate neurons before stacking.

An FFN is unchanged by permuting its intermediate neurons (rows of gate and up, columns of down, together), so
neuron i of one expert and neuron i of another need not do related work: averaging or decomposing unaligned
experts mixes unrelated units. Each expert is permuted to best match a reference expert (the layer's most heavily
weighted one): Hungarian matching (`scipy.optimize.linear_sum_assignment`) on the correlation of the neurons' weight
vectors (gate row, up row and down column, concatenated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

Stack = Callable[[int, list[int], str], torch.Tensor]


def neuron_features(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One expert's neurons as standardised rows (I x 3H): gate row, up row and down column of each neuron."""
    features = torch.cat([gate, up, down.T], dim=1).double()
    features = features - features.mean(dim=1, keepdim=True)
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def match_neurons(reference: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """The permutation p of `other`'s neurons (rows of neuron features) maximising the total correlation with
    `reference` (row i of the result is `other[p[i]]`), and the mean matched correlation before and after."""
    from scipy.optimize import linear_sum_assignment

    correlation = reference @ other.T  # (I x I): neuron i of the reference against neuron j of the other
    rows, cols = linear_sum_assignment(correlation.numpy(), maximize=True)
    order = torch.as_tensor(cols[rows.argsort()], dtype=torch.long)
    before = float(correlation.diagonal().mean())
    after = float(correlation[torch.arange(len(order)), order].mean())
    return order, before, after


@dataclass
class NeuronAlignedStack:
    """A stacking reader (`ExpertReader.stack`) whose experts of each layer are permuted onto `reference[layer]`.

    Attributes:
        stack: the reader's own stacking function (d1 x d2 x n per layer, experts and matrix).
        reference: per layer, the expert every other is aligned to.
        record: per layer, the mean matched correlation before and after alignment (kept for the manifest).
    """

    stack: Stack
    reference: dict[int, int]
    record: dict[int, dict[str, float]] = field(default_factory=dict)
    _orders: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def __call__(self, layer: int, ids: list[int], matrix: str) -> torch.Tensor:
        stacked = self.stack(layer, ids, matrix)
        self._align(layer, ids)
        orders = [self._orders[layer, e] for e in ids]
        dim = 1 if matrix == "down" else 0  # neurons: columns of down, rows of gate and up
        return torch.stack([stacked[..., k].index_select(dim, order) for k, order in enumerate(orders)], dim=-1)

    def _align(self, layer: int, ids: Sequence[int]) -> None:
        missing = [e for e in ids if (layer, e) not in self._orders]
        if not missing:
            return
        ref = self.reference[layer]
        every = sorted({ref, *missing})
        gate, up, down = (self.stack(layer, every, m) for m in ("gate", "up", "down"))
        features = {e: neuron_features(gate[..., k], up[..., k], down[..., k]) for k, e in enumerate(every)}
        before, after = [], []
        for e in missing:
            if e == ref:
                self._orders[layer, e] = torch.arange(features[e].shape[0])
                continue
            self._orders[layer, e], b, a = match_neurons(features[ref], features[e])
            before.append(b)
            after.append(a)
        if before:
            self.record[layer] = {"correlation_before": sum(before) / len(before), "after": sum(after) / len(after)}
