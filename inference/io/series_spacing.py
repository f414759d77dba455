"""Is a DICOM series evenly sliced? A missing file leaves a gap that SimpleITK reads silently.

ITK builds one spacing for the whole series, so a series with a missing instance (an incomplete
transfer, a deleted file) is read without error and every slice past the gap lands at the wrong
position. Checked on the Image Position (Patient) of every instance, projected on the normal.
"""
from __future__ import annotations

import numpy as np

RELATIVE_TOLERANCE = 0.01  # of the slice spacing; scanners write positions to 1e-3 mm or better


def uneven_slices(positions_mm, normal) -> str | None:
    """Why the slices (positions in the order read) are not evenly spaced along `normal`, or None."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    if len(positions) < 3:
        return None
    steps = np.diff(positions @ np.asarray(normal, dtype=np.float64))
    typical = float(np.median(steps))
    if abs(typical) < 1e-6:
        return f"{len(positions)} instances at the same position"
    off = np.flatnonzero(np.abs(steps - typical) > RELATIVE_TOLERANCE * abs(typical))
    if off.size == 0:
        return None
    first = int(off[0])
    return (f"slices not evenly spaced: {steps[first]:.3f} mm between instances {first} and {first + 1} where the "
            f"series steps {typical:.3f} mm (a missing or extra file?)")
