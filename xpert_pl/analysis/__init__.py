"""Expert-activation analysis: routing statistics per domain, expert selection, heatmaps."""

from xpert_pl.analysis.counter import ActivationCounts, ExpertActivationCounter, count_activations
from xpert_pl.analysis.plots import plot_layer_heatmaps
from xpert_pl.analysis.run import model_fingerprint, run_analysis
from xpert_pl.analysis.selection import ConsistentExpertSelector, ExpertSelector, LayerSelection, Selection

__all__ = [
    "ActivationCounts",
    "ConsistentExpertSelector",
    "ExpertActivationCounter",
    "ExpertSelector",
    "LayerSelection",
    "Selection",
    "count_activations",
    "model_fingerprint",
    "plot_layer_heatmaps",
    "run_analysis",
]
