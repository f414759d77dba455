"""Synthetic abdominal CT phantoms with FLARE labels, for training data, tests, benchmarks and the
`--demo` of `python -m inference`.

Owns the procedural anatomy, its rasterisation on any grid and the writing of image/label pairs.
May import `inference.core` and `inference.io` (geometry, image writing); nothing in `inference`
imports this package except the command line's `--demo`, lazily.
"""
from phantom.generator import FOVS, PHASES, Phantom, make_phantom, write_phantom

__all__ = ["FOVS", "PHASES", "Phantom", "make_phantom", "write_phantom"]
