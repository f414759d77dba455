"""Resampling of (C, Z, Y, X) or (Z, Y, X) volumes: one semantics, three backends.

Semantics, per axis and independently (every operator below is separable):
- mode "linear": where the axis shrinks, AREA averaging (torch adaptive average pooling, i.e.
  `F.interpolate(mode="area")`: output i averages input [floor(i*in/out), ceil((i+1)*in/out)));
  where it grows, LINEAR interpolation with align_corners=False; where it keeps its size, a copy.
  Averaging on the way down is what keeps thin structures and removes aliasing; linear on the way
  up is what nnU-Net-style exports use for logits.
- mode "nearest": torch "nearest-exact" (half-pixel centred), any dtype (labels stay labels).

`resample_torch` is the engine's implementation, CPU or CUDA, chunked so that memory stays
bounded; tests/reference_resampling.py holds the slow scipy oracle and an array-module version
(numpy or CuPy) it is tested against.

Index arithmetic follows torch's CPU kernels bit for bit (float32 scale `in/out`, source
coordinate computed with one rounding, as the kernels' fused multiply-add does). At an exact tie
of "nearest" (an output centre on an input voxel boundary) float rounding may pick either voxel;
the scipy oracle resolves ties exactly, towards the higher index.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MODES = ("linear", "nearest")
RANGE_MODES = ("linear", "area", "nearest")  # modes `source_range_for_output` understands
DEFAULT_MAX_ELEMENTS = 2**26  # 256 MiB of float32 per F.interpolate call
INT32_LIMIT = 2**31 - 1  # some kernels index with 32-bit integers

Shape3 = tuple[int, int, int]


# ----------------------------------------------------------------------------------- validation

def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_shape(new_shape: Any) -> Shape3:
    """new_shape as 3 positive Python ints (z, y, x), or ValueError."""
    try:
        sizes = tuple(new_shape)
    except TypeError:
        sizes = ()
    valid = len(sizes) == 3 and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) and s >= 1 for s in sizes)
    if not valid:
        raise ValueError(f"new_shape must be 3 positive ints (z, y, x), got {new_shape!r}")
    return tuple(int(s) for s in sizes)  # type: ignore[return-value]


def _check_ndim(ndim: int) -> None:
    if ndim not in (3, 4):
        raise ValueError(f"expected a (C, Z, Y, X) or (Z, Y, X) array, got {ndim} dimensions")


def _check_max_elements(max_elements: int) -> int:
    if isinstance(max_elements, bool) or not isinstance(max_elements, (int, np.integer)) or max_elements < 1:
        raise ValueError(f"max_elements must be a positive int, got {max_elements!r}")
    return min(int(max_elements), INT32_LIMIT)


def _axis_op(in_size: int, out_size: int, mode: str) -> str:
    """What happens along one axis: 'copy', 'area', 'linear' or 'nearest'."""
    if in_size == out_size:
        return "copy"
    if mode == "nearest":
        return "nearest"
    return "area" if out_size < in_size else "linear"


# ------------------------------------------------------------------------- per-axis index maths

def linear_source_weights(in_size: int, out_size: int, dtype: type = np.float32,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index along one axis: source indices `lo`, `hi` (int64) and the weight `frac`
    (`dtype`) of `hi`, as torch's linear interpolation with align_corners=False computes them:
    src = max((i + 0.5) * in/out - 0.5, 0), lo = floor(src), hi = min(lo + 1, in - 1),
    frac = src - lo. The value is x[lo] * (1 - frac) + x[hi] * frac.

    The scale is float32 like torch's, and `src` is rounded once, as torch's compiled kernels do
    (fused multiply-add), so the indices match the kernel exactly; equal sizes copy (frac = 0).
    dtype=np.float64 gives the weights torch uses for float64 tensors (double scale and source).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if in_size == out_size:
        index = np.arange(out_size, dtype=np.int64)
        return index, index.copy(), np.zeros(out_size, dtype=dtype)
    if dtype == np.float64:
        src = (in_size / out_size) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5
    else:
        src = _torch_source_coordinate(in_size, out_size)
    src = np.maximum(src, 0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    frac = np.clip(src - lo.astype(dtype), 0, 1).astype(dtype)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, frac


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index per output index for "nearest-exact": floor((i + 0.5) * in/out), clamped to
    in - 1, computed the way torch's CPU kernel does (round(src) of the linear coordinate)."""
    if in_size == out_size:
        return np.arange(out_size, dtype=np.int64)
    src = np.maximum(_torch_source_coordinate(in_size, out_size), np.float32(0))
    rounded = (src.astype(np.float64) + 0.5).astype(np.float32)  # torch: floorf(src + 0.5)
    return np.minimum(np.floor(rounded).astype(np.int64), in_size - 1)


def area_bins(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-average-pooling bins [start, stop) per output index (exact integer arithmetic)."""
    i = np.arange(out_size, dtype=np.int64)
    return (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)


def _torch_source_coordinate(in_size: int, out_size: int) -> np.ndarray:
    """float32 (i + 0.5) * scale - 0.5 with scale = float32(in) / out, rounded once (FMA)."""
    scale = np.float32(in_size) / np.float32(out_size)
    # float32 * (i + 0.5) is exact in float64; so is subtracting 0.5: one rounding at the end.
    exact = np.float64(scale) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5
    return exact.astype(np.float32)


def source_range_for_output(in_size: int, out_size: int, out_start: int, out_stop: int,
                            mode: str = "linear") -> tuple[int, int]:
    """Input indices [in_start, in_stop) that outputs [out_start, out_stop) read along one axis.

    mode "linear" follows `resample` (area where the axis shrinks, linear where it grows),
    "area" is adaptive average pooling at any sizes, "nearest" is nearest-exact. An empty output
    range reads nothing: (0, 0).
    """
    if mode not in RANGE_MODES:
        raise ValueError(f"mode must be one of {RANGE_MODES}, got {mode!r}")
    if not 0 <= out_start <= out_stop <= out_size:
        raise ValueError(f"need 0 <= out_start <= out_stop <= out_size, got {out_start}, {out_stop}, {out_size}")
    if out_start == out_stop:
        return 0, 0
    if in_size == out_size:
        return out_start, out_stop
    if mode == "area" or (mode == "linear" and out_size < in_size):
        starts, stops = area_bins(in_size, out_size)
        return int(starts[out_start]), int(stops[out_stop - 1])
    if mode == "nearest":
        index = nearest_source_indices(in_size, out_size)
        return int(index[out_start]), int(index[out_stop - 1]) + 1
    lo, hi, _ = linear_source_weights(in_size, out_size)
    return int(lo[out_start]), int(hi[out_stop - 1]) + 1


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> Shape3:
    """nnU-Net v2's rule: round(old_spacing / new_spacing * old_shape) per axis, at least 1."""
    if not len(shape) == len(spacing) == len(new_spacing) == 3:
        raise ValueError(f"shape, spacing and new_spacing need 3 values each, got {shape}, {spacing}, {new_spacing}")
    old = np.asarray(spacing, dtype=np.float64)
    new = np.asarray(new_spacing, dtype=np.float64)
    if not (np.all(np.isfinite(old)) and np.all(np.isfinite(new)) and np.all(old > 0) and np.all(new > 0)):
        raise ValueError(f"spacings must be finite and positive, got {spacing} -> {new_spacing}")
    sizes = np.round(old / new * np.asarray(shape, dtype=np.float64))
    return tuple(max(1, int(s)) for s in sizes)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- torch

@torch.no_grad()
def resample_torch(tensor: torch.Tensor, new_shape: Sequence[int], *, mode: str = "linear",
                   max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """Resample a (C, Z, Y, X) or (Z, Y, X) tensor to `new_shape` (z, y, x) on its own device.

    Output: same rank and device; the input's dtype for "nearest" (any dtype, labels included)
    and for floating "linear" inputs, float32 for integer "linear" inputs.

    Work is split into separable passes (in-plane slab by slab along z, then z in slabs of y, or
    the reverse when that intermediate is smaller), each pass chunked along axes it leaves
    untouched, so chunking is exact. No F.interpolate call reads or writes more than
    min(max_elements, 2**31 - 1) elements, except that one line along the resized axis is the
    smallest chunk.

    Peak extra memory: the output, plus, only when both the in-plane and the z size change, ONE
    channel at the intermediate resolution (min(Z*Y'*X', Z'*Y*X) elements), plus a few
    chunk-sized temporaries (the F.interpolate result, a cast/contiguous copy of its input and,
    when y and x need different operators, one slab between the two); never all channels at an
    intermediate resolution.
    """
    _check_mode(mode)
    shape = _check_shape(new_shape)
    _check_ndim(tensor.dim())
    limit = _check_max_elements(max_elements)
    volumes = tensor if tensor.dim() == 4 else tensor.unsqueeze(0)
    if mode == "nearest":
        out = _nearest_torch(volumes, shape, limit)
    else:
        dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
        out = torch.empty((volumes.shape[0], *shape), dtype=dtype, device=tensor.device)
        for channel in range(volumes.shape[0]):
            _linear_volume(volumes[channel], out[channel], limit)
    return out if tensor.dim() == 4 else out[0]


def _nearest_torch(volumes: torch.Tensor, shape: Shape3, limit: int) -> torch.Tensor:
    """Nearest-exact by index gather: exact for every dtype, identical on CPU and CUDA."""
    device = volumes.device
    index = [torch.from_numpy(nearest_source_indices(i, o)).to(device) for i, o in zip(volumes.shape[1:], shape)]
    out = torch.empty((volumes.shape[0], *shape), dtype=volumes.dtype, device=device)
    for channel in range(volumes.shape[0]):
        for zs, ys, xs in _box_chunks(shape, limit):
            # One broadcast gather writes the chunk directly: no intermediate at any resolution.
            out[channel, zs, ys, xs] = volumes[channel][
                index[0][zs, None, None], index[1][None, ys, None], index[2][None, None, xs]]
    return out


def _box_chunks(shape: Shape3, limit: int) -> Iterator[tuple[slice, slice, slice]]:
    """Split a (z, y, x) box into chunks of at most `limit` elements (at least one element)."""
    nz, ny, nx = shape
    if ny * nx <= limit:
        step = limit // (ny * nx)
        for z0 in range(0, nz, step):
            yield slice(z0, z0 + step), slice(None), slice(None)
    elif nx <= limit:
        step = limit // nx
        for z in range(nz):
            for y0 in range(0, ny, step):
                yield slice(z, z + 1), slice(y0, y0 + step), slice(None)
    else:
        for z in range(nz):
            for y in range(ny):
                for x0 in range(0, nx, limit):
                    yield slice(z, z + 1), slice(y, y + 1), slice(x0, x0 + limit)


def _linear_volume(volume: torch.Tensor, out: torch.Tensor, limit: int) -> None:
    """One channel (Z, Y, X) -> `out` (Z', Y', X'): area down / linear up, separable passes."""
    (nz, ny, nx), (mz, my, mx) = volume.shape, out.shape
    z_changes = nz != mz
    plane_changes = (ny, nx) != (my, mx)
    if not z_changes and not plane_changes:
        out.copy_(volume)
    elif not z_changes:
        _plane_pass(volume, out, limit)
    elif not plane_changes:
        _z_pass(volume, out, limit)
    elif nz * my * mx <= mz * ny * nx:  # keep the smaller of the two possible intermediates
        middle = torch.empty((nz, my, mx), dtype=out.dtype, device=out.device)
        _plane_pass(volume, middle, limit)
        _z_pass(middle, out, limit)
    else:
        middle = torch.empty((mz, ny, nx), dtype=out.dtype, device=out.device)
        _z_pass(volume, middle, limit)
        _plane_pass(middle, out, limit)


def _z_pass(src: torch.Tensor, dst: torch.Tensor, limit: int) -> None:
    """Resize z only. Permuted to (Y, Z, X), so z is a 2D 'height' and y-slabs are the chunks."""
    op = _axis_op(src.shape[0], dst.shape[0], "linear")
    _step_2d(src.permute(1, 0, 2), dst.permute(1, 0, 2), op, limit)


def _plane_pass(src: torch.Tensor, dst: torch.Tensor, limit: int) -> None:
    """Resize y and x of (Z, Y, X), one F.interpolate call per z-slab where one operator does both."""
    (nz, ny, nx), (_, my, mx) = src.shape, dst.shape
    op_y, op_x = _axis_op(ny, my, "linear"), _axis_op(nx, mx, "linear")
    ops = {op_y, op_x} - {"copy"}
    slice_elements = max(ny, my) * max(nx, mx)
    if len(ops) == 1 and (slice_elements <= limit or "copy" in (op_y, op_x)):
        _step_2d(src, dst, ops.pop(), limit)
        return
    # y and x need different operators (or one slice is too big for one call with both): one
    # axis at a time, the shrinking (cheaper afterwards) first, slab by slab so the
    # in-between result never exceeds a slab.
    steps = sorted([(op_y, (my, nx)), (op_x, (ny, mx))], key=lambda step: step[0] != "area")
    first_op, middle_plane = steps[0]
    slab = max(1, limit // slice_elements)
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        middle = torch.empty((z1 - z0, *middle_plane), dtype=dst.dtype, device=dst.device)
        _step_2d(src[z0:z1], middle, first_op, limit)
        _step_2d(middle, dst[z0:z1], steps[1][0], limit)


def _step_2d(src: torch.Tensor, dst: torch.Tensor, op: str, limit: int) -> None:
    """dst (A, H', W') <- one 2D operator ('area' or 'linear') applied to src (A, H, W).

    Chunks along A; when one of H/W is unchanged and a single item is too big, also along that
    axis: an unchanged axis maps index i to i (torch copies equal sizes), so chunks are exact.
    Callers never pass a too-big item in which both H and W change.
    """
    (count, h, w), (_, mh, mw) = src.shape, dst.shape
    item_elements = max(h, mh) * max(w, mw)
    if item_elements <= limit or (h != mh and w != mw):
        step = max(1, limit // item_elements)
        for a0 in range(0, count, step):
            dst[a0:a0 + step].copy_(_interpolate_2d(src[a0:a0 + step], (mh, mw), op, dst.dtype))
    elif h == mh:  # only W changes: whole rows are independent
        step = max(1, limit // max(w, mw))
        for a in range(count):
            for h0 in range(0, h, step):
                rows = src[a:a + 1, h0:h0 + step]
                dst[a:a + 1, h0:h0 + step].copy_(_interpolate_2d(rows, (rows.shape[1], mw), op, dst.dtype))
    else:  # only H changes: whole columns are independent
        step = max(1, limit // max(h, mh))
        for a in range(count):
            for w0 in range(0, w, step):
                columns = src[a:a + 1, :, w0:w0 + step]
                dst[a:a + 1, :, w0:w0 + step].copy_(_interpolate_2d(columns, (mh, columns.shape[2]), op, dst.dtype))


def _interpolate_2d(piece: torch.Tensor, size: tuple[int, int], op: str, dtype: torch.dtype) -> torch.Tensor:
    batch = piece.to(dtype).unsqueeze(1)  # (N, 1, H, W); casting here keeps integer inputs chunk-sized
    if op == "area":
        result = F.interpolate(batch, size=size, mode="area")
    else:
        result = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
    return result.squeeze(1)
