"""The one value that says where an array's voxels lie in the patient.

Arrays in this project are indexed (z, y, x), the order numpy gets from SimpleITK. `Geometry`
keeps spacing in that same array order (as nnU-Net's plans do) and origin/direction in
SimpleITK's physical convention, so converting back to an image is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ORTHONORMAL_TOLERANCE = 1e-3  # ITK itself accepts direction matrices only up to rounding noise


class GeometryError(ValueError):
    """A geometry that cannot describe a real 3D scan (bad spacing, direction or shape)."""


@dataclass(frozen=True)
class Geometry:
    shape: tuple[int, int, int]  # (z, y, x) voxels
    spacing: tuple[float, float, float]  # mm, (z, y, x), array order
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # physical position of voxel 0, SimpleITK (x, y, z)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # SimpleITK row-major 3x3

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in self.direction))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise GeometryError(f"shape must be 3 positive sizes, got {self.shape}")
        if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise GeometryError(f"spacing must be 3 finite positive values in mm, got {self.spacing}")
        if len(self.origin) != 3 or not all(math.isfinite(o) for o in self.origin):
            raise GeometryError(f"origin must be 3 finite values, got {self.origin}")
        if len(self.direction) != 9 or not all(math.isfinite(d) for d in self.direction):
            raise GeometryError(f"direction must be 9 finite values, got {self.direction}")
        matrix = self.direction_matrix
        if not np.allclose(matrix @ matrix.T, np.eye(3), atol=ORTHONORMAL_TOLERANCE):
            raise GeometryError(f"direction cosines are not orthonormal: {self.direction}")

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 matrix whose columns are the physical directions of the x, y, z index axes."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        return self.spacing[::-1]

    def axis_direction(self, array_axis: int) -> np.ndarray:
        """Physical unit vector along array axis 0 (z), 1 (y) or 2 (x)."""
        return self.direction_matrix[:, 2 - array_axis]

    def array_axis_along(self, physical_axis: int) -> int:
        """The array axis (0 z, 1 y, 2 x) most aligned with physical axis 0 (x: patient's left), 1 (y:
        posterior) or 2 (z: head), LPS."""
        return int(np.argmax([abs(self.axis_direction(axis)[physical_axis]) for axis in range(3)]))

    def cranial_sign(self, array_axis: int = 0) -> float:
        """+1 if increasing index along `array_axis` moves towards the head, -1 if towards the feet.

        LPS physical frame (DICOM, ITK): +z points superior (towards the head).
        """
        return 1.0 if self.axis_direction(array_axis)[2] >= 0 else -1.0

    def index_to_physical(self, index_zyx) -> np.ndarray:
        index_xyz = np.asarray(index_zyx, dtype=np.float64)[..., ::-1]
        return np.asarray(self.origin) + (index_xyz * np.asarray(self.spacing_xyz)) @ self.direction_matrix.T

    def cropped(self, start_zyx) -> "Geometry":
        """Geometry of the sub-array starting at index `start_zyx` (shape filled in by `with_shape`)."""
        origin = tuple(self.index_to_physical(start_zyx))
        return Geometry(self.shape, self.spacing, origin, self.direction)

    def with_shape(self, shape) -> "Geometry":
        return Geometry(tuple(shape), self.spacing, self.origin, self.direction)
