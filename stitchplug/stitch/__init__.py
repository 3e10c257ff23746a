"""The affine stitch between two residual streams: model, solvers, layer choice, evaluation."""

from .data import CacheSource, TensorSource
from .fit import FitResult, fit_stitch
from .model import Stitch
from .svcca import choose_layer, svcca

__all__ = ["Stitch", "fit_stitch", "FitResult", "TensorSource", "CacheSource", "choose_layer", "svcca"]
