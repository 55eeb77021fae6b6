"""Data layer: corpus domains and their deterministic splits; the pre-training and SFT (instruction) data modules."""

from xpert_pl.data.corpus import DomainSpec, default_domains
from xpert_pl.data.dolly import DollyInstructions, minillm_dolly_split
from xpert_pl.data.instruction_sources import InstructionSource, JsonlInstructions
from xpert_pl.data.pretrain import PretrainDataModule
from xpert_pl.data.prompts import InstructionExample, alpaca_prompt
from xpert_pl.data.sft import SFTDataModule
from xpert_pl.data.superni import SuperNIInstructions

__all__ = [
    "DollyInstructions",
    "DomainSpec",
    "InstructionExample",
    "InstructionSource",
    "JsonlInstructions",
    "PretrainDataModule",
    "SFTDataModule",
    "SuperNIInstructions",
    "alpaca_prompt",
    "default_domains",
    "minillm_dolly_split",
]
