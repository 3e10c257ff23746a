"""``python -m stitchplug ...`` (and ``torchrun --nproc-per-node N -m stitchplug cache ...``)."""

from .cli import main

main()
