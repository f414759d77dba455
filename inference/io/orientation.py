"""Canonical array orientation: the network always sees a scan laid out the same way.

nnU-Net runs on the array as stored. A scan stored in another of the 48 axis-aligned layouts
(axes permuted, some reversed) shows the network a transposed or mirrored body it never saw in
training. `canonicalize` permutes and flips the array's axes (numpy views, no copy) so that its
direction matrix becomes the axis-aligned one closest to the target, and returns `restore`, which
maps labels back to the input's own layout exactly (only index bookkeeping, no resampling).

The target, diag(-1, -1, 1) in SimpleITK's LPS convention (x runs to the patient's right, y to the
front, z to the head: "RAS" storage), is how most NIfTI converted from DICOM is stored, FLARE data
included, so for such scans nothing changes. For an oblique direction the closest signed axis
permutation is applied and the residual rotation stays in the geometry (nothing is resampled).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from inference.core.geometry import Geometry

CANONICAL_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)

Restore = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class AxisMap:
    """New array axis i is the input's axis `permutation[i]`, reversed where `flips[i]`."""
    permutation: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        return self.permutation == (0, 1, 2) and not any(self.flips)

    def _flip_slices(self) -> tuple[slice, ...]:
        return tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The input array in the new layout (a view)."""
        return np.transpose(array, self.permutation)[self._flip_slices()]

    def invert(self, array: np.ndarray) -> np.ndarray:
        """An array in the new layout back in the input's layout (a view)."""
        return np.transpose(array[self._flip_slices()], np.argsort(self.permutation))

    def as_dict(self) -> dict:
        return {"permutation": list(self.permutation), "flips": list(self.flips)}


def _axis_directions(direction) -> np.ndarray:
    """(3, 3): row i is the physical unit vector of array axis i (z, y, x)."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return matrix[:, ::-1].T


def closest_axis_map(direction, target_direction=CANONICAL_DIRECTION) -> AxisMap:
    """The signed axis permutation that brings `direction` closest to `target_direction`.

    Maximises sum_i s_i <a_p(i), t_i> over the 48 signed permutations (a: the input's axis
    directions, t: the target's), i.e. minimises the Frobenius distance between the permuted
    direction and the target. Ties (exact 45-degree obliques) go to the first permutation in
    itertools order, identity first, so the choice is deterministic.
    """
    axes, target = _axis_directions(direction), _axis_directions(target_direction)
    best, best_score = AxisMap(), -np.inf
    for permutation in itertools.permutations(range(3)):
        dots = [float(axes[p] @ target[i]) for i, p in enumerate(permutation)]
        score = sum(abs(d) for d in dots)
        if score > best_score + 1e-9:
            best_score = score
            best = AxisMap(tuple(permutation), tuple(d < 0 for d in dots))
    return best


def reoriented_geometry(geometry: Geometry, axis_map: AxisMap) -> Geometry:
    """The geometry of `axis_map.apply(array)`: same voxels at the same physical positions."""
    if axis_map.is_identity:
        return geometry
    axes = _axis_directions(geometry.direction)
    new_axes = np.stack([(-1.0 if f else 1.0) * axes[p] for p, f in zip(axis_map.permutation, axis_map.flips)])
    first_voxel = [geometry.shape[p] - 1 if f else 0 for p, f in zip(axis_map.permutation, axis_map.flips)]
    start_zyx = [0, 0, 0]
    for new_axis, original_axis in enumerate(axis_map.permutation):
        start_zyx[original_axis] = first_voxel[new_axis]
    return Geometry(
        shape=tuple(geometry.shape[p] for p in axis_map.permutation),
        spacing=tuple(geometry.spacing[p] for p in axis_map.permutation),
        origin=tuple(geometry.index_to_physical(start_zyx)),
        direction=tuple(new_axes[::-1].T.ravel()),  # back to SimpleITK's columns-are-x,y,z layout
    )


def canonicalize(volume: np.ndarray, geometry: Geometry,
                 target_direction=CANONICAL_DIRECTION) -> tuple[np.ndarray, Geometry, Restore]:
    """(volume view, its geometry, restore) with the view's direction closest to `target_direction`.

    `restore(labels)` takes an array shaped like the view and returns it in `volume`'s layout
    (C-contiguous). For a scan already stored in the target layout, the volume and geometry are
    returned as they are and `restore` returns its argument unchanged.
    """
    if tuple(volume.shape) != geometry.shape:
        raise ValueError(f"volume shape {volume.shape} does not match its geometry {geometry.shape}")
    axis_map = closest_axis_map(geometry.direction, target_direction)
    if axis_map.is_identity:
        return volume, geometry, _unchanged
    canonical = reoriented_geometry(geometry, axis_map)

    def restore(labels: np.ndarray) -> np.ndarray:
        if tuple(labels.shape) != canonical.shape:
            raise ValueError(f"labels shape {labels.shape} does not match the canonical shape {canonical.shape}")
        return np.ascontiguousarray(axis_map.invert(labels))

    return axis_map.apply(volume), canonical, restore


def _unchanged(labels: np.ndarray) -> np.ndarray:
    return labels
