"""Knowledge bank: Tucker-consolidated selected experts, their storage, and adaptation to a student."""

from xpert_pl.bank.adapt import collapse, depth_map, neuron_energy, rescale, select_hidden, select_neurons
from xpert_pl.bank.extract import (
    PlannedDecomposition,
    extract_bank,
    format_plan,
    group_source_layers,
    plan_extraction,
    read_selection,
)
from xpert_pl.bank.store import BankEntry, BankIntegrityError, KnowledgeBank
from xpert_pl.bank.tucker import TuckerConsolidator, TuckerFactors

__all__ = [
    "BankEntry",
    "BankIntegrityError",
    "KnowledgeBank",
    "PlannedDecomposition",
    "TuckerConsolidator",
    "TuckerFactors",
    "collapse",
    "depth_map",
    "extract_bank",
    "format_plan",
    "group_source_layers",
    "neuron_energy",
    "plan_extraction",
    "read_selection",
    "rescale",
    "select_hidden",
    "select_neurons",
]
