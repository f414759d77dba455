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

from inference.core.boxes import foreground_box
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


def measure_labels(labels: np.ndarray, geometry: Geometry, body: Body, max_label: int = TUMOR_LABEL) -> dict[int, OrganMeasure]:
    """OrganMeasure for every label 1..max_label present (the FLARE labels; a model with other
    values has no anatomy the rules know).

    One multi-label connected-components pass (cc3d labels 26-connected regions of equal value)
    and its per-component statistics give every label's size, pieces, extent and centroid at once:
    measuring each label on its own bounding box costs a pass over that box per label, and the box
    of a label scattered over the scan (what a failing model produces) is the whole scan (15 s on a
    512x512x300 case against under 1 s).
    """
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > max_label:
        labels = np.where(labels <= max_label, labels, 0).astype(labels.dtype)
    nonzero = labels != 0
    box = foreground_box(nonzero)
    if box is None:
        return {}
    crop, foreground = labels[box], nonzero[box]
    del nonzero
    components = _components(crop)
    stats = cc3d.statistics(components)
    label_of = np.zeros(len(stats["voxel_counts"]), dtype=np.int64)  # component 0, the background: 0
    label_of[components[foreground]] = crop[foreground]
    del components, foreground
    offset = np.array([s.start for s in box], dtype=np.float64)
    measures = {}
    for label in np.unique(label_of[1:]):  # every component from 1 on holds a label >= 1
        ids = np.flatnonzero(label_of == label)
        measures[int(label)] = _measure(int(label), labels, ids, stats, offset, geometry, body)
    return measures


def _components(crop: np.ndarray) -> np.ndarray:
    """26-connected components of every label value; 16-bit ids when they fit (half the memory)."""
    try:
        return cc3d.connected_components(crop, connectivity=26, out_dtype=np.uint16)
    except ValueError:  # cc3d's estimate of provisional ids exceeds 16 bits (a very noisy map)
        return cc3d.connected_components(crop, connectivity=26, out_dtype=np.uint32)


def _measure(label: int, labels: np.ndarray, ids: np.ndarray, stats: dict, offset: np.ndarray,
             geometry: Geometry, body: Body) -> OrganMeasure:
    """OrganMeasure of `label` from its components `ids` (cc3d statistics of the crop at `offset`)."""
    sizes = stats["voxel_counts"][ids].astype(np.int64)
    count = int(sizes.sum())
    boxes = [stats["bounding_boxes"][i] for i in ids]
    box = tuple(slice(int(min(b[a].start for b in boxes) + offset[a]), int(max(b[a].stop for b in boxes) + offset[a]))
                for a in range(3))
    centroid_index = (stats["centroids"][ids] * sizes[:, None]).sum(axis=0) / count + offset
    pieces = len(ids) if len(ids) <= 1 else int((sizes >= SIGNIFICANT_PIECE_SHARE * sizes.max()).sum())
    axis = cranio_caudal_axis(geometry)
    start, stop = box[axis].start, box[axis].stop
    spacing, n = geometry.spacing[axis], geometry.shape[axis]
    if geometry.cranial_sign(axis) > 0:
        bottom, top = start * spacing, (stop - 1) * spacing
    else:
        bottom, top = (n - stop) * spacing, (n - 1 - start) * spacing
    in_plane = [a for a in range(3) if a != axis]
    edge = any(box[a].start == 0 or box[a].stop == geometry.shape[a] for a in in_plane)
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    return OrganMeasure(
        label=label, volume_ml=count * voxel_ml, pieces=pieces,
        bottom_mm=bottom, top_mm=top, touches_slice_ends=start == 0 or stop == n,
        touches_in_plane_edge=edge, centroid_lps=tuple(float(c) for c in geometry.index_to_physical(centroid_index)),
        outside_body_share=_outside_share(labels, label, box, body),
        body_slab_ml=float(body.slab_ml[start:stop].sum()))


def _outside_share(labels: np.ndarray, label: int, box: tuple[slice, ...], body: Body) -> float:
    """Share of the label's voxels on the body grid that fall outside the outline (only the grid's
    voxels of the label's box are read)."""
    offsets = [(-s.start) % st for s, st in zip(box, body.stride)]  # first voxel on the coarse grid
    sampled = labels[tuple(slice(s.start + o, s.stop, st) for s, o, st in zip(box, offsets, body.stride))] == label
    coarse_box = tuple(slice((s.start + o) // st, (s.start + o) // st + n)
                       for s, o, st, n in zip(box, offsets, body.stride, sampled.shape))
    inside = body.mask[coarse_box]
    total = int(sampled.sum())
    return float((sampled & ~inside).sum()) / total if total else 0.0
