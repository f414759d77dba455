"""What the quality rules look at: the body outline and, per label, size, extent, pieces and side.

Pure functions on (labels, image in HU, Geometry). Positions are physical (LPS, mm: +x is the
patient's left, +z the head), so every rule reads the same whatever the array's layout.
Heights are mm above the caudal end of the field of view along the patient's head-feet axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from inference.core.geometry import Geometry
from inference.core.labels import TUMOR_LABEL

# The body outline: air is about -1000 HU, fat about -100; -500 separates them with room for
# noise and partial volume. Lungs and bowel gas inside the body are filled slice by slice.
BODY_HU_THRESHOLD = -500.0
# The outline is computed on a grid of at least this in-plane spacing (every n-th row/column):
# a body volume and an in-or-out test do not need sub-millimetre detail, and it keeps the pass
# to a fraction of a second on a 512x512x300 scan.
BODY_GRID_MM = 3.0
# A piece of an organ counts as a separate piece when it holds at least this share of the
# organ's largest piece: single stray voxels at a boundary are segmentation noise, not a split.
SIGNIFICANT_PIECE_SHARE = 0.1


@dataclass(frozen=True)
class Body:
    mask: np.ndarray  # bool, on the strided grid `stride` (z, y, x)
    stride: tuple[int, int, int]
    volume_ml: float
    width_mm: float  # left-right extent of the outline (physical x)
    centre_x_mm: float  # physical x (LPS: + is the patient's left) of the outline's centroid
    slab_ml: np.ndarray  # body mL per slice along the cranio-caudal axis (full-resolution index)


@dataclass(frozen=True)
class OrganMeasure:
    label: int
    volume_ml: float
    pieces: int  # connected pieces holding >= SIGNIFICANT_PIECE_SHARE of the largest
    bottom_mm: float  # caudal end, mm above the caudal end of the field of view
    top_mm: float
    touches_slice_ends: bool  # reaches the first or last slice along the head-feet axis
    touches_in_plane_edge: bool
    centroid_lps: tuple[float, float, float]
    outside_body_share: float  # share of the organ's voxels outside the body outline
    body_slab_ml: float  # body volume in the slices the organ spans


def cranio_caudal_axis(geometry: Geometry) -> int:
    """The array axis closest to the patient's head-feet axis (physical z)."""
    return geometry.array_axis_along(2)


def left_right_axis(geometry: Geometry) -> int:
    return geometry.array_axis_along(0)


def fov_length_mm(geometry: Geometry) -> float:
    axis = cranio_caudal_axis(geometry)
    return (geometry.shape[axis] - 1) * geometry.spacing[axis]


def body_outline(image: np.ndarray, geometry: Geometry) -> Body:
    """Largest 26-connected component above BODY_HU_THRESHOLD, holes filled in each axial slice."""
    axis = cranio_caudal_axis(geometry)
    stride = tuple(1 if a == axis else max(1, int(BODY_GRID_MM // geometry.spacing[a])) for a in range(3))
    coarse = np.asarray(image)[tuple(slice(None, None, s) for s in stride)] > BODY_HU_THRESHOLD
    if coarse.any():
        coarse = cc3d.largest_k(coarse, k=1, connectivity=26) > 0
        coarse = np.moveaxis(coarse, axis, 0)
        for index in range(coarse.shape[0]):
            if coarse[index].any():
                coarse[index] = ndimage.binary_fill_holes(coarse[index])
        coarse = np.moveaxis(coarse, 0, axis)
    voxel_ml = float(np.prod([sp * s for sp, s in zip(geometry.spacing, stride)])) / 1000.0
    other = tuple(a for a in range(3) if a != axis)
    slab_ml = coarse.sum(axis=other).astype(np.float64) * voxel_ml
    lr = left_right_axis(geometry)
    present = np.flatnonzero(coarse.any(axis=tuple(a for a in range(3) if a != lr)))
    width = float((present[-1] - present[0] + 1) * stride[lr] * geometry.spacing[lr]) if present.size else 0.0
    centre = np.array(ndimage.center_of_mass(coarse)) * stride if present.size else (np.array(geometry.shape) - 1) / 2
    return Body(coarse, stride, float(slab_ml.sum()), width, float(geometry.index_to_physical(centre)[0]), slab_ml)


def measure_label(labels: np.ndarray, label: int, box: tuple[slice, ...], geometry: Geometry,
                  body: Body) -> OrganMeasure:
    """Measurements of one label given its bounding box (from ndimage.find_objects)."""
    mask = labels[box] == label
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    count = int(mask.sum())
    axis = cranio_caudal_axis(geometry)
    start, stop = box[axis].start, box[axis].stop
    spacing, n = geometry.spacing[axis], geometry.shape[axis]
    if geometry.cranial_sign(axis) > 0:
        bottom, top = start * spacing, (stop - 1) * spacing
    else:
        bottom, top = (n - stop) * spacing, (n - 1 - start) * spacing
    in_plane = [a for a in range(3) if a != axis]
    edge = any(box[a].start == 0 or box[a].stop == geometry.shape[a] for a in in_plane)
    centroid_index = np.array(ndimage.center_of_mass(mask)) + [s.start for s in box]
    return OrganMeasure(
        label=label, volume_ml=count * voxel_ml, pieces=significant_pieces(mask),
        bottom_mm=bottom, top_mm=top, touches_slice_ends=start == 0 or stop == n,
        touches_in_plane_edge=edge, centroid_lps=tuple(float(c) for c in geometry.index_to_physical(centroid_index)),
        outside_body_share=_outside_share(mask, box, body),
        body_slab_ml=float(body.slab_ml[start:stop].sum()))


def significant_pieces(mask: np.ndarray) -> int:
    components, count = cc3d.connected_components(mask, connectivity=26, return_N=True)
    if count <= 1:
        return count
    sizes = np.bincount(components.ravel())[1:]
    return int((sizes >= SIGNIFICANT_PIECE_SHARE * sizes.max()).sum())


def _outside_share(mask: np.ndarray, box: tuple[slice, ...], body: Body) -> float:
    """Share of the organ's voxels on the body grid that fall outside the outline."""
    offsets = [(-s.start) % st for s, st in zip(box, body.stride)]  # first voxel on the coarse grid
    sampled = mask[tuple(slice(o, None, st) for o, st in zip(offsets, body.stride))]
    coarse_box = tuple(slice((s.start + o) // st, (s.start + o) // st + n)
                       for s, o, st, n in zip(box, offsets, body.stride, sampled.shape))
    inside = body.mask[coarse_box]
    total = int(sampled.sum())
    return float((sampled & ~inside).sum()) / total if total else 0.0


def measure_labels(labels: np.ndarray, geometry: Geometry, body: Body, max_label: int = TUMOR_LABEL) -> dict[int, OrganMeasure]:
    """OrganMeasure for every label 1..max_label present (the FLARE labels; a model with other
    values has no anatomy the rules know)."""
    boxes = ndimage.find_objects(labels, max_label=max_label)
    return {index + 1: measure_label(labels, index + 1, box, geometry, body)
            for index, box in enumerate(boxes) if box is not None}
