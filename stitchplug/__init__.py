"""stitchplug: transfer linear interpretability artifacts between language models via affine stitches."""

__version__ = "0.1.0"
