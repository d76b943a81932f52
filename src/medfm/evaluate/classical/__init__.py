"""Classical baselines by name; importing this package registers them all in ``CLASSICAL``."""

from medfm.evaluate.classical import images, text, timeseries, volumes  # noqa: F401  (registers)
from medfm.evaluate.classical.base import CLASSICAL, Classical, fit_predict

__all__ = ["CLASSICAL", "Classical", "fit_predict"]
