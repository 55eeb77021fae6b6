"""Initializers of a student's weights: scratch, XPERT, its controls and peer methods.

Each is a small class chosen by `class_path` (`model.initializer` in a run's YAML) and reports what it set.
Modules by concept: `xpert` (XPERT), `referee` (random/rare/full/single-expert controls), `statistics`
(knowledge-vs-statistics controls), `peers` (methods from the literature), `scratch`, `source_weights`; the
shared machinery is `transfer` (`FFNTransfer`, every expert-based method's `transfer` argument) and `shared`.
"""

from xpert_pl.adaptation import SourceFFN, UnsupportedStudentError
from xpert_pl.initializers.base import Initializer, InitReport
from xpert_pl.initializers.peers import LinearExpansionInit, WeightSelectionInit
from xpert_pl.initializers.referee import (
    AlignedXpertInit,
    FullExpertsInit,
    RandomExpertsInit,
    RareExpertsInit,
    SingleDomainExpertsInit,
    SingleExpertInit,
)
from xpert_pl.initializers.scratch import ScratchInit
from xpert_pl.initializers.source_weights import WithSourceWeights
from xpert_pl.initializers.statistics import (
    NormMatchedScratchInit,
    ShuffledXpertInit,
    SpectrumMatchedInit,
    UntrainedSourceInit,
)
from xpert_pl.initializers.transfer import FFNTransfer, FFNTransferInit
from xpert_pl.initializers.xpert import XpertInit

__all__ = [
    "AlignedXpertInit",
    "FFNTransfer",
    "FFNTransferInit",
    "FullExpertsInit",
    "InitReport",
    "Initializer",
    "LinearExpansionInit",
    "NormMatchedScratchInit",
    "RandomExpertsInit",
    "RareExpertsInit",
    "ScratchInit",
    "ShuffledXpertInit",
    "SingleDomainExpertsInit",
    "SingleExpertInit",
    "SourceFFN",
    "SpectrumMatchedInit",
    "UnsupportedStudentError",
    "UntrainedSourceInit",
    "WeightSelectionInit",
    "WithSourceWeights",
    "XpertInit",
]
