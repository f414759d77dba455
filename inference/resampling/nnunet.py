"""nnU-Net's own image resampling (`resample_data_or_seg_to_shape` with is_seg=False), reproduced
with scipy so that the engine can feed a network exactly what nnU-Net's predictor feeds it.

Why it is written here and not imported: inference never imports nnunetv2 (README, "How the engine works"), and nnU-Net's
function takes the whole volume in float64 plus a full coordinate grid for the thick axis. This
one computes the same values slice by slice:
- anisotropic scans (max/min spacing > 3, of the input or of the target, or forced by the plans):
  every slice across the thick axis resized in-plane by skimage's `resize(order, mode="edge",
  anti_aliasing=False)`, which is `scipy.ndimage.zoom(..., mode="nearest", grid_mode=True)` clipped
  to the slice's value range; then the thick axis by `map_coordinates(order_z, mode="nearest")`
  at half-pixel-centred coordinates (order 0: an index lookup);
- otherwise one 3D `resize` of the whole volume.
Values are computed in float64 and returned as float32, like nnU-Net's.

On a CUDA device with CuPy the in-plane spline runs on the GPU (`cupyx.scipy.ndimage.zoom`, one
plane at a time, so the device holds a few planes whatever the scan's length): the same
arithmetic as scipy's up to float rounding, without the seconds a CPU spends on a clinical scan.
Parameters are plain values (the plans' `resampling_fn_data_kwargs`), not the model config.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ANISOTROPY_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD


def separate_axis(spacing: Sequence[float], target_spacing: Sequence[float],
                  force_separate_z: bool | None) -> int | None:
    """The axis nnU-Net resamples on its own (`determine_do_sep_z_and_axis`), or None."""
    def thick_axes(values):
        values = np.asarray(values, dtype=float)
        return np.flatnonzero(values.max() / values == 1)

    if force_separate_z is not None:
        axes = thick_axes(spacing) if force_separate_z else None
    elif np.max(spacing) / np.min(spacing) > ANISOTROPY_THRESHOLD:
        axes = thick_axes(spacing)
    elif np.max(target_spacing) / np.min(target_spacing) > ANISOTROPY_THRESHOLD:
        axes = thick_axes(target_spacing)
    else:
        axes = None
    return int(axes[0]) if axes is not None and len(axes) == 1 else None


def resize_like_skimage(image, shape: Sequence[int], order: int, zoom=None):
    """skimage.transform.resize(image, shape, order, mode="edge", anti_aliasing=False) of float64.
    `zoom`: scipy's (None), or cupyx's for a CuPy array (the same code on the GPU)."""
    if zoom is None:
        from scipy.ndimage import zoom  # noqa: PLC0415 - only --resampling nnunet needs scipy.ndimage
    factors = [out / size for out, size in zip(shape, image.shape)]
    resized = zoom(image, factors, order=order, mode="nearest", grid_mode=True)
    if order > 0:  # skimage clips interpolated values to the input's range
        resized.clip(image.min(), image.max(), out=resized)
    return resized


def resample_like_nnunet(volume: np.ndarray, target_shape: Sequence[int], spacing: Sequence[float],
                         target_spacing: Sequence[float], order: int = 3, order_z: int = 0,
                         force_separate_z: bool | None = None, workers: int | None = None,
                         device: str = "cpu") -> np.ndarray:
    """(Z, Y, X) float32 -> `target_shape` float32, nnU-Net's values for an image channel.
    `workers`: threads resizing planes (None: the CPU count, at most 8); `device` "cuda": the
    planes are resized on the GPU with CuPy (the CPU when CuPy or CUDA is missing)."""
    target_shape = tuple(int(n) for n in target_shape)
    if tuple(volume.shape) == target_shape:
        return np.asarray(volume, dtype=np.float32)
    axis = separate_axis(spacing, target_spacing, force_separate_z)
    if axis is None:
        return resize_like_skimage(volume.astype(np.float64), target_shape, order).astype(np.float32)
    # Each plane is resized on its own, so only the planes the thick-axis pass reads are resized (a
    # nearest pass reads a subset when it shrinks), on a thread pool: scipy's zoom releases the GIL.
    # The values stay nnU-Net's bit for bit.
    size, out_size = volume.shape[axis], target_shape[axis]
    nearest = order_z == 0 and size != out_size
    sources, picks = (np.unique(nearest_indices(size, out_size), return_inverse=True) if nearest
                      else (np.arange(size), None))
    plane_shape = [n for i, n in enumerate(target_shape) if i != axis]
    planes = _resize_planes(volume, sources, axis, plane_shape, order, workers, device)
    if nearest:
        return np.take(planes, picks, axis=axis).astype(np.float32)
    if size == out_size:
        return planes.astype(np.float32)
    return _resample_thick_axis(planes, axis, target_shape, order_z).astype(np.float32)


def _resize_planes(volume: np.ndarray, sources: np.ndarray, axis: int, plane_shape, order: int,
                   workers: int | None, device: str) -> np.ndarray:
    """float64 planes `sources` of `volume` across `axis`, each resized to `plane_shape`: on the
    GPU one after the other, on the CPU on a thread pool (scipy's zoom releases the GIL)."""
    across = list(plane_shape)
    across.insert(axis, len(sources))
    planes = np.empty(across, dtype=np.float64)
    resize = _gpu_plane_resizer(order) if device == "cuda" else None

    def resize_plane(position: int) -> None:
        source = np.take(volume, sources[position], axis=axis).astype(np.float64)
        target = (slice(None),) * axis + (position,)
        planes[target] = resize(source, plane_shape) if resize else resize_like_skimage(source, plane_shape, order)

    if resize is not None:
        for position in range(len(sources)):
            resize_plane(position)
        resize.release()
    else:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(resize_plane, range(len(sources))))
    return planes


class _CupyPlanes:
    """Resizes one float64 plane at a time on the GPU with cupyx's spline (its memory pool is
    emptied by `release`, so NVML does not count cached blocks after the stage)."""

    def __init__(self, cupy, zoom, order: int):
        self.cupy, self.zoom, self.order = cupy, zoom, order

    def __call__(self, plane: np.ndarray, shape) -> np.ndarray:
        resized = resize_like_skimage(self.cupy.asarray(plane), shape, self.order, zoom=self.zoom)
        return self.cupy.asnumpy(resized)

    def release(self) -> None:
        self.cupy.get_default_memory_pool().free_all_blocks()


def _gpu_plane_resizer(order: int) -> _CupyPlanes | None:
    """CuPy's resizer when CuPy and a CUDA device are there, else None (the CPU path)."""
    try:
        import cupy  # noqa: PLC0415 - optional GPU dependency
        from cupyx.scipy.ndimage import zoom  # noqa: PLC0415
        if not cupy.cuda.is_available():
            return None
    except Exception:  # ImportError, or a CUDA library that does not load  # noqa: BLE001
        return None
    return _CupyPlanes(cupy, zoom, order)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """nnU-Net's order-0 `map_coordinates` along one axis: source index floor(c + 0.5) of the
    half-pixel-centred coordinate c = in/out * (i + 0.5) - 0.5 (float64), clamped ("nearest").
    Not `resampling.nearest_source_indices`: that one follows torch's float32 kernel, and the two
    may pick different voxels at exact ties."""
    coordinate = in_size / out_size * (np.arange(out_size) + 0.5) - 0.5
    return np.clip(np.floor(coordinate + 0.5).astype(np.int64), 0, in_size - 1)


def nearest_axes(spacing: Sequence[float], target_spacing: Sequence[float], order_z: int,
                 force_separate_z: bool | None) -> tuple[bool, ...]:
    """Per axis: does nnU-Net resample it by nearest neighbour (its separate axis with order_z 0)?"""
    axis = separate_axis(spacing, target_spacing, force_separate_z)
    return tuple(axis == a and order_z == 0 for a in range(len(spacing)))


def _resample_thick_axis(planes: np.ndarray, axis: int, target_shape: tuple[int, ...], order_z: int) -> np.ndarray:
    """nnU-Net's map_coordinates pass: coordinates scale * (i + 0.5) - 0.5 per axis (the in-plane
    axes already have their size, so their coordinates are the integers themselves)."""
    if order_z == 0:  # scipy's order 0: an index lookup
        return np.take(planes, nearest_indices(planes.shape[axis], target_shape[axis]), axis=axis)
    scale = planes.shape[axis] / target_shape[axis]
    coordinate = scale * (np.arange(target_shape[axis]) + 0.5) - 0.5
    grid = np.meshgrid(*[coordinate if a == axis else np.arange(n, dtype=float)
                         for a, n in enumerate(target_shape)], indexing="ij")
    from scipy.ndimage import map_coordinates  # noqa: PLC0415 - as in resize_like_skimage
    return map_coordinates(planes, np.array(grid), order=order_z, mode="nearest")
