"""Knowledge bank: Tucker-consolidated selected experts, their storage and their collapse to dense matrices
(adapting those to a student is `xpert_pl.adaptation`)."""

from xpert_pl.bank.extract import (
    PlannedDecomposition,
    extract_bank,
    format_plan,
    group_source_layers,
    plan_extraction,
    read_selection,
)
from xpert_pl.bank.store import BankEntry, BankIntegrityError, KnowledgeBank
from xpert_pl.bank.tucker import TuckerConsolidator, TuckerFactors, collapse

__all__ = [
    "BankEntry",
    "BankIntegrityError",
    "KnowledgeBank",
    "PlannedDecomposition",
    "TuckerConsolidator",
    "TuckerFactors",
    "collapse",
    "extract_bank",
    "format_plan",
    "group_source_layers",
    "plan_extraction",
    "read_selection",
]
