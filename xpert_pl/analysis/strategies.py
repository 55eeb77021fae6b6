"""Expert-selection strategies besides the XPERT default, as controls and ablations.

Every strategy scores all E routed experts of each layer, keeps the n best by its own order and writes the
scores into `selection.json`, so the file shows why the chosen experts won. Frequencies are shown as E * f so
that 1.0 is an expert's uniform share, as on the heatmaps. Ties are broken as documented per class, and finally
by the lower expert id, so every strategy is deterministic.

- `TopFrequencySelector`: the most used experts on average over domains.
- `LeastFrequentSelector`: the least used ones (the "rare experts" control).
- `RandomExpertSelector`: a seeded draw, independent per layer (the "any experts" control).
- `DomainSpecialistSelector`: the most used experts of one domain (the single-domain ablation, Figure 5).
"""

from __future__ import annotations

import torch

from xpert_pl.analysis.counter import ActivationCounts
from xpert_pl.analysis.selection import (
    ExpertSelector,
    Selection,
    Weighting,
    check_n,
    check_weighting,
    make_selection,
    ranked_selection,
    resolve_n,
    scored_frequency,
)

__all__ = ["DomainSpecialistSelector", "LeastFrequentSelector", "RandomExpertSelector", "TopFrequencySelector"]


class TopFrequencySelector(ExpertSelector):
    """The experts routed to most often, on average over domains: score E * mean_d f_{l,d}(e).

    Each domain counts equally whatever its token count (a mean over domains, not pooled over tokens), as in the
    consistency score. Ties go to the lower expert id.
    """

    SCORE = "E * mean_d f_{l,d}(e), f = top-k routing frequency (1.0 = uniform share); highest kept"

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
        mean_freq = scored_frequency(counts).mean(dim=1)  # (L, E)
        scores = counts.num_experts * mean_freq
        layers = ranked_selection(counts, n, -scores, scores, mean_freq, self.weighting)
        return make_selection(counts, "top_frequency", n, self.SCORE, layers)


class LeastFrequentSelector(ExpertSelector):
    """The experts routed to least often, on average over domains: score E * mean_d f_{l,d}(e), lowest kept.

    Ties (typically several never-used experts) go to the lower expert id. With `frequency` weighting, a selected
    set that was never routed to gets uniform weights, and its layers say so in `weights_note`.
    """

    SCORE = "E * mean_d f_{l,d}(e), f = top-k routing frequency (1.0 = uniform share); lowest kept"

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
        mean_freq = scored_frequency(counts).mean(dim=1)  # (L, E)
        scores = counts.num_experts * mean_freq
        layers = ranked_selection(counts, n, scores, scores, mean_freq, self.weighting)
        return make_selection(counts, "least_frequent", n, self.SCORE, layers)


class RandomExpertSelector(ExpertSelector):
    """n experts drawn uniformly at random per layer, reproducibly.

    Layer l draws one uniform number per expert from `torch.Generator().manual_seed(seed + l)` and keeps the n
    largest, so layers are independent, the draw does not depend on the routing statistics, and the sets for
    growing n are nested. The draws are written as the scores.
    """

    SCORE = "uniform random draw in [0, 1) per expert, generator seeded with seed + layer; highest kept"

    def __init__(self, n: int | None = None, seed: int = 0, weighting: Weighting = "uniform"):
        """
        Args:
            n: experts kept per layer; None keeps the source's top_k.
            seed: base seed; layer l uses seed + l.
            weighting: `uniform` gives each selected expert 1/n; `frequency` weights them by their mean routing
                frequency over domains (normalised over the selected set).
        """
        self.n = check_n(n)
        self.seed = int(seed)
        self.weighting = check_weighting(weighting)

    def select(self, counts: ActivationCounts) -> Selection:
        n = resolve_n(self.n, counts)
        draws = torch.stack([self._draw(layer, counts.num_experts) for layer in range(counts.num_layers)])
        # Uniform weights need no statistics, so only frequency weighting requires every domain to have tokens.
        freq = scored_frequency(counts, None if self.weighting == "frequency" else [])
        layers = ranked_selection(counts, n, -draws, draws, freq.mean(dim=1), self.weighting)
        return make_selection(counts, "random", n, f"{self.SCORE} (seed={self.seed})", layers)

    def _draw(self, layer: int, num_experts: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + layer)
        return torch.rand(num_experts, generator=generator, dtype=torch.float64)


class DomainSpecialistSelector(ExpertSelector):
    """The experts one domain uses most: score E * f_{l,d}(e) for the given domain d.

    Ties go to the higher mean frequency over all domains, then to the lower expert id. Every layer's JSON
    object carries `domain`.
    """

    def __init__(self, domain: str, n: int | None = None, weighting: Weighting = "frequency"):
        """
        Args:
            domain: the domain whose routing picks the experts; must be one of the analysed domains.
            n: experts kept per layer; None keeps the source's top_k.
            weighting: `frequency` weights experts by their routing frequency in `domain` (normalised over the
                selected set); `uniform` gives each 1/n.
        """
        if not domain:
            raise ValueError("domain must be a non-empty domain name")
        self.domain = domain
        self.n = check_n(n)
        self.weighting = check_weighting(weighting)

    def select(self, counts: ActivationCounts) -> Selection:
        if self.domain not in counts.domains:
            raise ValueError(f"unknown domain '{self.domain}'; the counts have: {counts.domains}")
        n = resolve_n(self.n, counts)
        # Only the specialist's domain must have tokens; the others serve as a tie-break.
        freq = scored_frequency(counts, [self.domain])
        domain_freq = freq[:, counts.domains.index(self.domain)]  # (L, E)
        scores = counts.num_experts * domain_freq
        order = torch.stack([-scores, -freq.mean(dim=1)], dim=-1)
        layers = ranked_selection(counts, n, order, scores, domain_freq, self.weighting, {"domain": self.domain})
        score = f"E * f_{{l,d}}(e) for d = '{self.domain}', f = top-k routing frequency (1.0 = uniform share)"
        return make_selection(counts, "domain_specialist", n, score, layers)
