"""Knowledge bank: Tucker-consolidated selected experts, their storage, and adaptation to a student."""

from xpert_pl.bank.adapt import collapse, depth_map, neuron_energy, rescale, select_hidden, select_neurons
from xpert_pl.bank.extract import extract_bank, read_selection
from xpert_pl.bank.store import BankEntry, BankIntegrityError, KnowledgeBank
from xpert_pl.bank.tucker import TuckerConsolidator, TuckerFactors

__all__ = [
    "BankEntry",
    "BankIntegrityError",
    "KnowledgeBank",
    "TuckerConsolidator",
    "TuckerFactors",
    "collapse",
    "depth_map",
    "extract_bank",
    "neuron_energy",
    "read_selection",
    "rescale",
    "select_hidden",
    "select_neurons",
]
