"""Expert-activation analysis: routing statistics per domain, selection strategies, heatmaps."""

from xpert_pl.analysis.counter import ActivationCounts, ExpertActivationCounter, count_activations
from xpert_pl.analysis.plots import plot_layer_heatmaps, plot_selection_vs_n
from xpert_pl.analysis.run import model_fingerprint, run_analysis, write_analysis
from xpert_pl.analysis.selection import ConsistentExpertSelector, ExpertSelector, LayerSelection, Selection
from xpert_pl.analysis.strategies import (
    DomainSpecialistSelector,
    LeastFrequentSelector,
    RandomExpertSelector,
    TopFrequencySelector,
)

__all__ = [
    "ActivationCounts",
    "ConsistentExpertSelector",
    "DomainSpecialistSelector",
    "ExpertActivationCounter",
    "ExpertSelector",
    "LayerSelection",
    "LeastFrequentSelector",
    "RandomExpertSelector",
    "Selection",
    "TopFrequencySelector",
    "count_activations",
    "model_fingerprint",
    "plot_layer_heatmaps",
    "plot_selection_vs_n",
    "run_analysis",
    "write_analysis",
]
