"""Data layer: corpus domains, their deterministic splits and the pre-training data module."""

from xpert_pl.data.corpus import DomainSpec, default_domains
from xpert_pl.data.pretrain import PretrainDataModule

__all__ = ["DomainSpec", "PretrainDataModule", "default_domains"]
