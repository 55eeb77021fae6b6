"""Lightning callbacks shipped with the kit (installed as `xpert_pl.callbacks`)."""

from xpert_pl.callbacks.export import HFExport

__all__ = ["HFExport"]
