"""Lightning callbacks shipped with the kit (installed as `xpert_pl.callbacks`)."""

from xpert_pl.callbacks.export import HFExport
from xpert_pl.callbacks.lm_eval import LMEvalCallback
from xpert_pl.callbacks.rouge import RougeLCallback

__all__ = ["HFExport", "LMEvalCallback", "RougeLCallback"]
