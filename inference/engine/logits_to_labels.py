"""Logits at model resolution -> labels on the input grid, never holding all classes at full resolution.

Two methods (compare them in BENCHMARKS.md):
- "argmax": argmax at model resolution, then nearest-neighbour upsampling of the labels. Cheapest.
- "logits": what nnU-Net does (linear interpolation of the logits, then argmax) restricted to the
  region that can hold foreground and computed slab by slab along the first axis with the argmax
  taken per slab. The result equals interpolating the whole map and taking its argmax: outside the
  box every interpolated vector is a convex combination of vectors whose argmax is background,
  hence background too. The same argument inside the box: an output voxel whose source corners
  all have the same argmax gets that label without interpolating, so where no axis shrinks only
  the voxels between differently labelled corners (organ borders: a few percent of a trained
  model's map) are interpolated, at the corners they read (`_boundary_labels`).

Where an axis shrinks, `shrink` says how: "area" (averaging every input the output covers: the
`fast` resampling) or "linear" (two-tap linear interpolation at the output's centre without
anti-aliasing: what nnU-Net's export does, skimage's `resize(order=1)`, so `--resampling nnunet`
uses it). Linear reads two inputs per axis whichever way the axis goes, so the border-only path
serves every shape with it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from inference.core.boxes import foreground_extents
from inference.core.choices import EXPORT_METHODS
from inference.engine.preprocessing import Preprocessed
from inference.resampling.nnunet import nearest_indices
from inference.resampling.fast import area_bins, linear_source_weights, resample_torch, source_range_for_output

NO_NEAREST_AXES = (False, False, False)
SHRINK_MODES = ("area", "linear")

SLAB_BYTES = 256 * 2**20  # working set per slab on the CPU; a device gets its budget's (`working_bytes`)
# Interpolating a border voxel at its corners (8 gathers of every class) costs about 2.5 times a
# voxel of the dense separable passes (2-core Xeon, 1 thread: a map that is all border took 2.43 s
# against 0.94 s dense): above this share of border voxels the dense passes are cheaper.
BOUNDARY_SHARE_LIMIT = 0.3
BOUNDARY_CHUNK = 1 << 18  # border voxels interpolated per batch (14 classes x 8 corners: about 120 MB)
GATHER_BYTES = 4 * 8 * 2  # per class and border voxel: float32 values of 8 corners, and their blends


def output_span(in_size: int, out_size: int, box_lo: int, box_hi: int, nearest: bool = False,
                shrink: str = "area") -> tuple[int, int]:
    """Output index range whose values read any input index in [box_lo, box_hi) along one axis."""
    if out_size == in_size:
        return box_lo, box_hi
    if nearest:
        lo = hi = nearest_indices(in_size, out_size)
    elif _linear(in_size, out_size, shrink):
        lo, hi, _ = linear_source_weights(in_size, out_size)
    else:
        lo, hi = area_bins(in_size, out_size)
        hi = hi - 1  # last input index read
    touching = np.flatnonzero((hi >= box_lo) & (lo < box_hi))
    return int(touching[0]), int(touching[-1]) + 1


def _check_shrink(shrink: str) -> None:
    if shrink not in SHRINK_MODES:
        raise ValueError(f"shrink must be one of {SHRINK_MODES}, got {shrink!r}")


def _linear(in_size: int, out_size: int, shrink: str) -> bool:
    """Is this axis resized by linear interpolation (it grows, or it shrinks with `shrink` "linear")?"""
    _check_shrink(shrink)
    return out_size > in_size or (out_size < in_size and shrink == "linear")


def axis_weights(in_size: int, out_size: int, out_start: int, out_stop: int, in_start: int, in_stop: int,
                 dtype=np.float32, nearest: bool = False, shrink: str = "area") -> np.ndarray:
    """Dense (out_stop - out_start, in_stop - in_start) matrix resizing one axis from in_size to
    out_size (`shrink` down, linear up with align_corners=False; `nearest`: nnU-Net's nearest
    neighbour), restricted to an output window and the input window it reads. Rows hold torch's
    own weights, so results equal F.interpolate's.
    """
    rows = np.arange(out_stop - out_start)
    matrix = np.zeros((out_stop - out_start, in_stop - in_start), dtype=dtype)
    if nearest:
        matrix[rows, nearest_indices(in_size, out_size)[out_start:out_stop] - in_start] = 1.0
    elif _linear(in_size, out_size, shrink):
        lo, hi, frac = (a[out_start:out_stop] for a in linear_source_weights(in_size, out_size, dtype))
        np.add.at(matrix, (rows, lo - in_start), 1 - frac)
        np.add.at(matrix, (rows, hi - in_start), frac)  # add: lo == hi at the clamped border
    else:
        lo, hi = (b[out_start:out_stop] for b in area_bins(in_size, out_size))
        for row, (a, b) in enumerate(zip(lo - in_start, hi - in_start)):
            matrix[row, a:b] = 1.0 / (b - a)
    return matrix


def resample_axis(x: torch.Tensor, dim: int, in_size: int, out_size: int, out_start: int, out_stop: int,
                  in_offset: int = 0, nearest: bool = False, shrink: str = "area") -> torch.Tensor:
    """Outputs out_start..out_stop-1 of resizing axis `dim` from in_size to out_size (`shrink` down,
    linear up, align_corners=False), when `x` holds input indices from `in_offset` on.

    Resampling is separable, so applying this per axis equals torch's 3D call; computing only an
    output window with global weights is what lets us crop and chunk exactly. Each pass is one
    matrix product (BLAS), several times faster than gathering and blending index pairs.
    """
    if out_size == in_size:
        return x.narrow(dim, out_start - in_offset, out_stop - out_start)
    dtype = np.float64 if x.dtype == torch.float64 else np.float32  # torch's own weight precision
    matrix = torch.from_numpy(axis_weights(in_size, out_size, out_start, out_stop, in_offset,
                                           in_offset + x.shape[dim], dtype, nearest, shrink)).to(x.device, x.dtype)
    if dim == x.dim() - 1:
        return torch.matmul(x, matrix.T)
    moved = x.movedim(dim, -2)  # matmul contracts the second-to-last axis of its right operand
    return torch.matmul(matrix, moved).movedim(-2, dim)


def argmax_channels(scores: torch.Tensor) -> torch.Tensor:
    """uint8 argmax over the class axis (first index wins ties), for finite scores.

    Written as a running maximum over the classes rather than `scores.argmax(0)`: torch reduces over
    the outermost axis with strided reads, while each step here streams one contiguous class plane.
    Equal to `argmax(0)` (strict `>` keeps the first of equal scores); 3.9x faster on a 14x32x256x256
    slab on a 2-core Xeon, 4.4 s of a clinical-size case's export before.
    """
    if scores.shape[0] > 256:
        raise ValueError(f"{scores.shape[0]} classes do not fit uint8 labels")
    best = scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    for channel in range(1, scores.shape[0]):
        better = scores[channel] > best
        torch.where(better, scores[channel], best, out=best)
        index.masked_fill_(better, channel)
    return index


def _plane_kernel_pays(in_plane, out_plane, window_plane, shrink: str = "area") -> bool:
    """True when resizing the whole plane with torch's interpolation kernel costs less than the
    dense per-axis matrix products restricted to the window (which grow with the square of the
    window's side: cheap for organ crops, wasteful on a whole 512x512 plane)."""
    (yi, xi), (yo, xo), (yw, xw) = in_plane, out_plane, window_plane
    matrix_macs = yw * yi * xi + yw * xi * xw
    kernel_cost = 8 * yo * xo  # a few memory passes per output element, no reduction over inputs
    return _plane_resizable(in_plane, out_plane, shrink) and kernel_cost < matrix_macs


def _plane_resizable(in_plane, out_plane, shrink: str = "area") -> bool:
    """One 2D kernel serves both in-plane axes only if they change the same way (bilinear serves
    any pair when shrinking is linear too)."""
    (yi, xi), (yo, xo) = in_plane, out_plane
    return shrink == "linear" or (yo > yi and xo > xi) or (yo < yi and xo < xi) or (yo, xo) == (yi, xi)


def _resize_plane(part: torch.Tensor, out_plane, shrink: str = "area") -> torch.Tensor:
    """(C, S, Y, X) -> (C, S, Y', X'): bilinear up and `shrink` down on whole planes (torch's
    kernels; bilinear without anti-aliasing is two-tap both ways)."""
    grows = out_plane[0] > part.shape[2]
    kwargs = {"mode": "bilinear", "align_corners": False} if grows or shrink == "linear" else {"mode": "area"}
    return F.interpolate(part, size=tuple(out_plane), **kwargs)


def _source_range(in_size: int, out_size: int, out_start: int, out_stop: int, nearest: bool,
                  shrink: str = "area") -> tuple[int, int]:
    if nearest and in_size != out_size:
        index = nearest_indices(in_size, out_size)
        return int(index[out_start]), int(index[out_stop - 1]) + 1
    if out_size < in_size and _linear(in_size, out_size, shrink):
        lo, hi, _ = linear_source_weights(in_size, out_size)
        return int(lo[out_start]), int(hi[out_stop - 1]) + 1
    return source_range_for_output(in_size, out_size, out_start, out_stop)


def _interpolate_outputs(rows: torch.Tensor, row_offset: int, in_shape, out_shape, out_z: tuple[int, int],
                         plane_kernel: bool | None = None, nearest_axes: tuple[bool, ...] = NO_NEAREST_AXES,
                         working_bytes: int | None = None, shrink: str = "area"
                         ) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """Labels for output slices out_z[0]..out_z[1]-1 (all of y and x) of resizing a map of
    `in_shape` to `out_shape`, when `rows` holds the map's rows from `row_offset` on, including
    every row those outputs read. Returns the labels inside their foreground window and the
    window's slices in the output grid (None: all background). `working_bytes` bounds the
    temporaries (default: SLAB_BYTES, and BOUNDARY_CHUNK border voxels a batch). `shrink`: how
    shrinking axes are resized (module docstring).
    """
    low = argmax_channels(rows)
    box = foreground_extents(low)
    if box is None:
        return np.zeros((0, 0, 0), np.uint8), None
    box = ((box[0][0] + row_offset, box[0][1] + row_offset), *box[1:])
    window = [output_span(i, o, lo, hi, nearest, shrink) for i, o, (lo, hi), nearest
              in zip(in_shape, out_shape, box, nearest_axes)]
    window[0] = (max(window[0][0], out_z[0]), min(window[0][1], out_z[1]))
    if window[0][0] >= window[0][1]:
        return np.zeros((0, 0, 0), np.uint8), None
    window_slices = tuple(slice(a, b) for a, b in window)
    if all(o >= i or nearest or shrink == "linear" for i, o, nearest in zip(in_shape, out_shape, nearest_axes)):
        chunk = BOUNDARY_CHUNK if working_bytes is None else max(1, working_bytes // (GATHER_BYTES * rows.shape[0]))
        labels = _boundary_labels(rows, low, row_offset, in_shape, out_shape, window, nearest_axes=nearest_axes,
                                  chunk=chunk)
        if labels is not None:
            return labels, window_slices
    (z0, z1), (y0, y1), (x0, x1) = window
    if plane_kernel is None:
        plane_kernel = _plane_kernel_pays(in_shape[1:], out_shape[1:], (y1 - y0, x1 - x0), shrink)
    plane_kernel = plane_kernel and _plane_resizable(in_shape[1:], out_shape[1:], shrink) and not any(nearest_axes[1:])
    if plane_kernel:  # whole planes in, window cut from the output
        (sy0, sy1), (sx0, sx1) = (0, in_shape[1]), (0, in_shape[2])
        plane_elements = out_shape[1] * out_shape[2]
    else:
        (sy0, sy1), (sx0, sx1) = (_source_range(i, o, a, b, nearest, shrink) for i, o, (a, b), nearest
                                  in zip(in_shape[1:], out_shape[1:], window[1:], nearest_axes[1:]))
        plane_elements = (y1 - y0) * (x1 - x0)
    classes = rows.shape[0]
    budget = SLAB_BYTES if working_bytes is None else working_bytes
    slab = max(1, budget // max(classes * plane_elements * 4 * 3, 1))  # slab, y pass, x pass
    labels = np.empty((z1 - z0, y1 - y0, x1 - x0), dtype=np.uint8)
    for start in range(z0, z1, slab):
        stop = min(start + slab, z1)
        sz0, sz1 = _source_range(in_shape[0], out_shape[0], start, stop, nearest_axes[0], shrink)
        part = rows[:, sz0 - row_offset:sz1 - row_offset, sy0:sy1, sx0:sx1].float()
        part = resample_axis(part, 1, in_shape[0], out_shape[0], start, stop, sz0, nearest_axes[0], shrink)
        if plane_kernel:
            part = _resize_plane(part, out_shape[1:], shrink)[:, :, y0:y1, x0:x1]
        else:
            part = resample_axis(part, 2, in_shape[1], out_shape[1], y0, y1, sy0, nearest_axes[1], shrink)
            part = resample_axis(part, 3, in_shape[2], out_shape[2], x0, x1, sx0, nearest_axes[2], shrink)
        labels[start - z0:stop - z0] = argmax_channels(part).cpu().numpy()
    return labels, window_slices


def _boundary_labels(rows: torch.Tensor, low: torch.Tensor, row_offset: int, in_shape, out_shape, window,
                     share_limit: float | None = None, nearest_axes: tuple[bool, ...] = NO_NEAREST_AXES,
                     chunk: int = BOUNDARY_CHUNK) -> np.ndarray | None:
    """Labels of the output `window` when no axis shrinks by area (linear interpolation, up or down,
    reads two source indices per axis, one where the axis keeps its size or is resized by nearest
    neighbour), interpolating only border voxels.

    A voxel whose (up to 8) source corners share one argmax gets it: its interpolated vector is a
    convex combination of vectors in which that class is largest. The other voxels are
    interpolated from their corners' logits, z then y then x like the dense passes, and their
    argmax taken. Returns None (use the dense passes) when border voxels exceed `share_limit`.
    """
    share_limit = BOUNDARY_SHARE_LIMIT if share_limit is None else share_limit
    device = rows.device
    corners = []  # per axis: (source index, weight) pairs of each output index in the window
    for size_in, size_out, (start, stop), offset, nearest in zip(in_shape, out_shape, window, (row_offset, 0, 0),
                                                                 nearest_axes):
        if nearest and size_in != size_out:
            index = torch.from_numpy(nearest_indices(size_in, size_out)[start:stop]).to(device)
            corners.append(((index - offset, None),))
            continue
        lo, hi, frac = (torch.from_numpy(v[start:stop]).to(device) for v in linear_source_weights(size_in, size_out))
        corners.append(((lo - offset, None),) if size_in == size_out else ((lo - offset, 1 - frac), (hi - offset, frac)))
    (z_corners, y_corners, x_corners) = corners
    # Corner agreement, separably: along x, then y, then z (uint8 maps of the window's size at most).
    x_values = [low[:, :, index] for index, _ in x_corners]
    same = _all_equal(x_values)
    y_values = [x_values[0][:, index] for index, _ in y_corners]
    same = _all_equal(y_values, [same[:, index] for index, _ in y_corners])
    z_values = [y_values[0][index] for index, _ in z_corners]
    same = _all_equal(z_values, [same[index] for index, _ in z_corners])
    labels, border = z_values[0], ~same
    if int(border.sum()) > share_limit * labels.numel():
        return None
    flat = rows.reshape(rows.shape[0], -1)
    plane, width = rows.shape[2] * rows.shape[3], rows.shape[3]
    slices_per_batch = max(1, chunk // max(border[0].numel(), 1))
    for first in range(0, border.shape[0], slices_per_batch):  # bounded index and gather memory
        z, y, x = torch.nonzero(border[first:first + slices_per_batch]).unbind(1)
        z = z + first
        along_z = {}  # (y corner, x corner) -> classes x voxels, interpolated along z
        for iy, (y_index, _) in enumerate(y_corners):
            for ix, (x_index, _) in enumerate(x_corners):
                offset = y_index[y] * width + x_index[x]
                along_z[iy, ix] = _interpolate_pairs([(_gather_columns(flat, z_index[z] * plane + offset), _at(w, z))
                                                      for z_index, w in z_corners])
        along_y = [_interpolate_pairs([(along_z[iy, ix], _at(w, y)) for iy, (_, w) in enumerate(y_corners)])
                   for ix in range(len(x_corners))]
        scores = _interpolate_pairs([(values, _at(w, x)) for values, (_, w) in zip(along_y, x_corners)])
        labels[z, y, x] = argmax_channels(scores)
    return labels.cpu().numpy()


def _gather_columns(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """flat[:, index] as float32. Per class row: each row is contiguous even when `flat` is a view of
    a larger map, where a 2D index_select falls back to a path measured 180x slower."""
    return torch.stack([row.index_select(0, index) for row in flat]).float()


def _all_equal(values: list[torch.Tensor], already: list[torch.Tensor] | None = None) -> torch.Tensor:
    """True where every map in `values` agrees (and every map in `already` is True)."""
    same = values[0] == values[-1] if len(values) > 1 else torch.ones_like(values[0], dtype=torch.bool)
    for flags in already or []:
        same &= flags
    return same


def _at(weight: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if weight is None else weight[index]


def _interpolate_pairs(pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """x[lo] * (1 - frac) + x[hi] * frac for [(x[lo], 1 - frac), (x[hi], frac)]; one pair: x itself."""
    if len(pairs) == 1:
        return pairs[0][0]
    (a, wa), (b, wb) = pairs
    return a * wa + b * wb


def upsample_labels_nearest(low: torch.Tensor, out_shape) -> np.ndarray:
    """Model-resolution labels -> labels on `out_shape` by nearest-exact."""
    if tuple(low.shape) == tuple(out_shape):
        return low.cpu().numpy()
    return resample_torch(low, tuple(out_shape), mode="nearest").cpu().numpy()


def _check_method(method: str) -> None:
    if method not in EXPORT_METHODS:
        raise ValueError(f"export method must be one of {EXPORT_METHODS}, got {method!r}")


def _input_grid(full: np.ndarray, transpose_backward, label_values: list[int] | None) -> np.ndarray:
    """Class indices in the transposed layout -> label values in the input's axis order."""
    if label_values is not None and label_values != list(range(len(label_values))):
        full = np.asarray(label_values, dtype=np.uint8)[full]  # class index -> label value
    return np.ascontiguousarray(full.transpose(transpose_backward))


class SlabExport:
    """Labels on the input grid from logits that arrive as z-slabs in order (`sliding_window_slabs`),
    so the model-resolution map of all classes never exists whole.

    `add(z0, slab)` takes model-resolution rows z0.. and labels every output slice whose source
    rows have all arrived; rows no later output reads are dropped, so at most one slab plus the
    rows one output slice reads are held. "argmax" keeps only the uint8 argmax per slab.

    Labels equal the whole map's (tests/reference_export.py) up to float rounding: each group of output
    slices gets its own foreground window (exact, by the convexity argument of the module
    docstring), and a different window can change the order of the additions in the in-plane
    pass or pick the other in-plane kernel (tests/test_export.py measures the agreement).
    `nearest_axes` and `shrink` choose the resampling per axis (module docstring).
    """

    def __init__(self, pre: Preprocessed, model_shape, method: str = "logits",
                 nearest_axes: tuple[bool, ...] = NO_NEAREST_AXES, working_bytes: int | None = None,
                 shrink: str = "area"):
        _check_method(method)
        _check_shrink(shrink)
        self.pre, self.method, self.nearest_axes, self.shrink = pre, method, tuple(nearest_axes), shrink
        self.working_bytes = working_bytes
        self.in_shape, self.out_shape = tuple(int(s) for s in model_shape), tuple(pre.crop.shape)
        self.full = np.zeros(pre.transposed_shape, dtype=np.uint8)
        self.crop_labels = self.full[pre.crop.slices]  # a view: labels land in the input-sized array
        self.low = np.zeros(self.in_shape, dtype=np.uint8) if method == "argmax" else None
        self.source_start, self.source_stop = _source_rows(self.in_shape[0], self.out_shape[0], self.nearest_axes[0],
                                                           shrink)
        self.rows: torch.Tensor | None = None
        self.row_offset = 0  # model-resolution z index of self.rows[:, 0]
        self.arrived = 0  # rows received so far
        self.done = 0  # output slices labelled so far

    def add(self, z0: int, slab: torch.Tensor) -> None:
        if z0 != self.arrived or slab.shape[1] == 0:
            raise ValueError(f"slabs must arrive in order and non-empty: expected z0 = {self.arrived}, got {z0}")
        self.arrived += slab.shape[1]
        if self.low is not None:
            self.low[z0:self.arrived] = argmax_channels(slab).cpu().numpy()
            return
        self.rows = slab if self.rows is None else torch.cat([self.rows, slab], dim=1)
        ready = int(np.searchsorted(self.source_stop, self.arrived, side="right"))
        if ready > self.done:
            self._label_outputs(self.done, ready)
            self.done = ready
        self._drop_read_rows()

    def _label_outputs(self, out_start: int, out_stop: int) -> None:
        first, last = int(self.source_start[out_start]), int(self.source_stop[out_stop - 1])
        rows = self.rows[:, first - self.row_offset:last - self.row_offset]
        labels, window = _interpolate_outputs(rows, first, self.in_shape, self.out_shape, (out_start, out_stop),
                                              nearest_axes=self.nearest_axes, working_bytes=self.working_bytes,
                                              shrink=self.shrink)
        if window is not None:
            self.crop_labels[window] = labels

    def _drop_read_rows(self) -> None:
        keep_from = int(self.source_start[self.done]) if self.done < self.out_shape[0] else self.arrived
        if keep_from > self.row_offset:
            self.rows = self.rows[:, keep_from - self.row_offset:].clone()  # clone: let the old rows go
            self.row_offset = keep_from

    def held_bytes(self) -> int:
        """Bytes of the model-resolution rows waiting for the outputs that read them."""
        return 0 if self.rows is None else self.rows.numel() * self.rows.element_size()

    def labels(self, transpose_backward, label_values: list[int] | None = None) -> np.ndarray:
        """Labels (uint8) on the original input grid, once every slab has arrived."""
        if self.arrived != self.in_shape[0]:
            raise ValueError(f"{self.arrived} of {self.in_shape[0]} model-resolution rows arrived")
        if self.low is not None:
            self.crop_labels[...] = upsample_labels_nearest(torch.from_numpy(self.low), self.out_shape)
        return _input_grid(self.full, transpose_backward, label_values)


def _source_rows(in_size: int, out_size: int, nearest: bool = False, shrink: str = "area"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per output index along z: first and one-past-last input index it reads
    (`source_range_for_output` for every output at once; both are non-decreasing)."""
    if in_size == out_size or nearest:  # one source row per output (the identity when sizes agree)
        index = nearest_indices(in_size, out_size)
        return index, index + 1
    if _linear(in_size, out_size, shrink):
        lo, hi, _ = linear_source_weights(in_size, out_size)
        return lo, hi + 1
    return area_bins(in_size, out_size)
