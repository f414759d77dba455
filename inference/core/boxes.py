"""The bounding box of the non-zero voxels of a mask or label map, on numpy arrays and torch tensors
alike (the engine finds it on logits' argmax, the cascade on organ masks, preprocessing on the scan).
"""
from __future__ import annotations

import numpy as np


def axis_extent(mask, axis: int) -> tuple[int, int] | None:
    """[start, stop) of the indices along `axis` where boolean `mask` holds a True; None if none does."""
    present = mask.any(tuple(a for a in range(mask.ndim) if a != axis))  # a 1-D projection, small
    present = np.flatnonzero(present.cpu().numpy() if hasattr(present, "cpu") else present)
    return (int(present[0]), int(present[-1]) + 1) if present.size else None


def foreground_extents(values) -> tuple[tuple[int, int], ...] | None:
    """[start, stop) per axis of the smallest box holding every non-zero element; None when all are zero."""
    is_bool = values.dtype in (bool, np.bool_) or str(values.dtype) == "torch.bool"
    nonzero = values if is_bool else values != 0
    extents = []
    for axis in range(nonzero.ndim):
        extent = axis_extent(nonzero, axis)
        if extent is None:
            return None
        extents.append(extent)
    return tuple(extents)


def foreground_box(values) -> tuple[slice, ...] | None:
    """`foreground_extents` as slices, for indexing."""
    extents = foreground_extents(values)
    return None if extents is None else tuple(slice(start, stop) for start, stop in extents)
