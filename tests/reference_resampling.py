"""Reference resampling backends the engine's `resample_torch` is tested against: a slow scipy
oracle (float64, one obviously correct step at a time), the same semantics for any array module
(numpy here, CuPy on a GPU), and a numpy-in/numpy-out dispatcher over the three."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from inference.resampling.fast import (DEFAULT_MAX_ELEMENTS, Shape3, _axis_op, _check_mode, _check_ndim, _check_shape,
                                  area_bins, linear_source_weights, nearest_source_indices, resample_torch)

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "cupy", "scipy")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


# ------------------------------------------------------------------------- any array module

def _resample_array_module(xp: Any, array: Any, shape: Shape3, mode: str) -> Any:
    """Same semantics for numpy or cupy arrays, channel by channel, one axis at a time.

    Written for the cupy backend; run with numpy it lets CPU tests check the same code.
    """
    volumes = array if array.ndim == 4 else array[None]
    if mode == "linear":
        dtype = volumes.dtype if np.issubdtype(volumes.dtype, np.floating) else np.float32
    else:
        dtype = volumes.dtype
    out = xp.empty((volumes.shape[0], *shape), dtype=dtype)
    ops = [(axis, _axis_op(volumes.shape[axis + 1], shape[axis], mode)) for axis in range(3)]
    ops.sort(key=lambda item: item[1] != "area")  # shrink first: later passes touch fewer voxels
    for channel in range(volumes.shape[0]):
        volume = volumes[channel].astype(dtype, copy=False)
        for axis, op in ops:
            volume = _axis_array_module(xp, volume, axis, shape[axis], op)
        out[channel] = volume
    return out if array.ndim == 4 else out[0]


def _axis_array_module(xp: Any, volume: Any, axis: int, out_size: int, op: str) -> Any:
    in_size = volume.shape[axis]
    if op == "copy":
        return volume
    if op == "nearest":
        return xp.take(volume, xp.asarray(nearest_source_indices(in_size, out_size)), axis=axis)
    broadcast = [1, 1, 1]
    broadcast[axis] = out_size
    if op == "linear":
        weight_dtype = np.float64 if volume.dtype == np.float64 else np.float32  # as torch's kernels
        lo, hi, frac = linear_source_weights(in_size, out_size, weight_dtype)
        weight = xp.asarray(frac.astype(volume.dtype)).reshape(broadcast)
        return (xp.take(volume, xp.asarray(lo), axis=axis) * (1 - weight)
                + xp.take(volume, xp.asarray(hi), axis=axis) * weight)
    starts, stops = area_bins(in_size, out_size)
    # Bins of non-integer factors overlap, so reshape-mean does not work; cumulative sums in
    # float64 do, with no cancellation worth the name at CT magnitudes.
    zero_shape = list(volume.shape)
    zero_shape[axis] = 1
    cumulative = xp.concatenate(
        [xp.zeros(zero_shape, dtype=xp.float64), xp.cumsum(volume, axis=axis, dtype=xp.float64)], axis=axis)
    sums = xp.take(cumulative, xp.asarray(stops), axis=axis) - xp.take(cumulative, xp.asarray(starts), axis=axis)
    counts = xp.asarray((stops - starts).astype(np.float64)).reshape(broadcast)
    return (sums / counts).astype(volume.dtype)


# ----------------------------------------------------------------------------------------- cupy

def _import_cupy() -> Any:
    try:
        import cupy  # noqa: PLC0415 - optional GPU dependency, imported only when asked for
    except Exception as error:  # ImportError, or a broken CUDA library underneath
        raise RuntimeError(f"cupy backend needs a CUDA GPU: cupy is not importable ({error})") from error
    try:
        available = bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001 - any driver failure means the same to us
        available = False
    if not available:
        raise RuntimeError("cupy backend needs a CUDA GPU: cupy.cuda.is_available() is False")
    return cupy


def resample_cupy(array: Any, new_shape: Sequence[int], *, mode: str = "linear") -> Any:
    """Resample on the GPU with cupy. numpy in -> numpy out (moved one channel at a time, and the
    memory pool freed before returning); cupy in -> cupy out (memory left to the caller)."""
    _check_mode(mode)
    shape = _check_shape(new_shape)
    _check_ndim(array.ndim)
    cupy = _import_cupy()
    if isinstance(array, cupy.ndarray):
        return _resample_array_module(cupy, array, shape, mode)
    host = np.asarray(array)
    volumes = host if host.ndim == 4 else host[None]
    try:
        parts = [cupy.asnumpy(_resample_array_module(cupy, cupy.asarray(volume), shape, mode)) for volume in volumes]
    finally:
        cupy.get_default_memory_pool().free_all_blocks()
    out = np.stack(parts)
    return out if host.ndim == 4 else out[0]


# ---------------------------------------------------------------------------------------- scipy

def resample_scipy(array: np.ndarray, new_shape: Sequence[int], *, mode: str = "linear") -> np.ndarray:
    """Reference oracle: slow, float64, one axis at a time, each step obviously correct.

    Linear growth is scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest"): grid_mode maps
    pixel centres with scale in/out (align_corners=False) and "nearest" clamps at the borders as
    torch does. Area is a literal loop over the pooling bins. Nearest uses exact integer maths
    floor((2i + 1) * in / (2 * out)), so ties go to the higher index.
    """
    _check_mode(mode)
    shape = _check_shape(new_shape)
    source = np.asarray(array)
    _check_ndim(source.ndim)
    volumes = source if source.ndim == 4 else source[None]
    if mode == "linear":
        dtype = volumes.dtype if np.issubdtype(volumes.dtype, np.floating) else np.dtype(np.float32)
        result = volumes.astype(np.float64)
    else:
        dtype = volumes.dtype
        result = volumes
    for axis in range(3):
        result = _scipy_axis(result, axis + 1, shape[axis], mode)
    result = result.astype(dtype)
    return result if source.ndim == 4 else result[0]


def _scipy_axis(array: np.ndarray, axis: int, out_size: int, mode: str) -> np.ndarray:
    import scipy.ndimage  # noqa: PLC0415 - only the oracle needs scipy.ndimage

    in_size = array.shape[axis]
    op = _axis_op(in_size, out_size, mode)
    if op == "copy":
        return array
    if op == "nearest":
        index = np.minimum((2 * np.arange(out_size) + 1) * in_size // (2 * out_size), in_size - 1)
        return np.take(array, index, axis=axis)
    if op == "linear":
        zoom = [1.0] * array.ndim
        zoom[axis] = out_size / in_size
        result = scipy.ndimage.zoom(array, zoom, order=1, grid_mode=True, mode="nearest")
        expected = array.shape[:axis] + (out_size,) + array.shape[axis + 1:]
        if result.shape != expected:
            raise AssertionError(f"scipy zoom gave {result.shape}, expected {expected}")
        return result
    moved = np.moveaxis(array, axis, 0)
    pooled = np.empty((out_size, *moved.shape[1:]), dtype=np.float64)
    for i in range(out_size):
        start, stop = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
        pooled[i] = moved[start:stop].mean(axis=0)
    return np.moveaxis(pooled, 0, axis)


# ------------------------------------------------------------------------------------ dispatcher

def resample(array: np.ndarray, new_shape: Sequence[int], *, mode: str = "linear", backend: str = "torch",
             device: str | torch.device = "cpu", max_elements: int = DEFAULT_MAX_ELEMENTS) -> np.ndarray:
    """numpy in, numpy out, any backend. `device` and `max_elements` apply to the torch backend;
    on a non-CPU device the array travels one channel at a time to keep device memory small."""
    _check_backend(backend)
    _check_mode(mode)
    shape = _check_shape(new_shape)
    source = np.asarray(array)
    _check_ndim(source.ndim)
    if backend == "scipy":
        return resample_scipy(source, shape, mode=mode)
    if backend == "cupy":
        return resample_cupy(source, shape, mode=mode)
    tensor = _numpy_to_tensor(source)
    target = torch.device(device)
    if target.type == "cpu":
        return resample_torch(tensor, shape, mode=mode, max_elements=max_elements).numpy()
    volumes = tensor if tensor.dim() == 4 else tensor.unsqueeze(0)
    parts = [resample_torch(volume.to(target), shape, mode=mode, max_elements=max_elements).cpu()
             for volume in volumes]
    out = torch.stack(parts).numpy()
    return out if source.ndim == 4 else out[0]


def _numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing memory with `array` where torch allows it, a copy where it does not
    (negative strides, non-native byte order)."""
    if any(stride < 0 for stride in array.strides) or not array.dtype.isnative:
        logger.debug("copying a %s array torch cannot view", array.dtype)
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        # torch warns that a read-only array could be written through the tensor; we never write it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
