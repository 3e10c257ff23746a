"""`stitchplug run`: the staged pipeline cache -> stitch -> artifact -> transfer -> evaluate -> report."""
