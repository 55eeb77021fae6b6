"""Initializers of a student's weights: scratch (Hugging Face init) and XPERT (from a knowledge bank)."""

from xpert_pl.initializers.base import Initializer, InitReport
from xpert_pl.initializers.scratch import ScratchInit
from xpert_pl.initializers.xpert import UnsupportedStudentError, XpertInit

__all__ = ["InitReport", "Initializer", "ScratchInit", "UnsupportedStudentError", "XpertInit"]
