"""Is a host organ credible enough to spend a tumor model on it?

A tumor stage costs in proportion to its organ's crop. On scans the organ model does not
understand (not CT, a body part without that organ) it labels scattered voxels or whole regions
as the organ: a crop over most of the scan made one liver tumor stage cost 750 s on an image
scaled to 0..1. Such a stage is skipped like one the time budget refuses, and the report says why.

Both tests use the organ's own bounding box (no margins, which dominate on small scans).
Thresholds from the real CT of ../shared/data/real with its pseudo labels: the liver's box covers
0.13 of the whole scan and 0.33 of its 30-slice upper-abdomen slab; the pancreas, the organ that
fills its box least, fills 0.035 of it.
"""
from __future__ import annotations

import math

import numpy as np

from inference.core.boxes import foreground_box

MAX_BOX_SHARE_OF_SCAN = 0.5
MIN_BOX_FILL = 0.005


def implausible_organ(organ: np.ndarray) -> str | None:
    """Why the organ `organ` (bool mask of the scan) is not credible; None if it is (or absent)."""
    box = foreground_box(organ)
    if box is None:
        return None
    box_voxels = math.prod(s.stop - s.start for s in box)
    share = box_voxels / organ.size
    if share > MAX_BOX_SHARE_OF_SCAN:
        return f"implausible organ: its box covers {share:.0%} of the scan (at most {MAX_BOX_SHARE_OF_SCAN:.0%})"
    fill = np.count_nonzero(organ[box]) / box_voxels
    if fill < MIN_BOX_FILL:
        return f"implausible organ: scattered, it fills {fill:.2%} of its box (at least {MIN_BOX_FILL:.1%})"
    return None
