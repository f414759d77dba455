"""nnU-Net v2 preprocessing, step for step as its plans say: transpose, crop to non-zero,
normalise, resample to the configuration's spacing.

One deliberate difference from nnU-Net by default: resampling to model spacing uses our torch
backend (area down, linear up) instead of nnU-Net's third-order spline (skimage, float64, CPU),
which costs seconds per case. `resampling="nnunet"` gives nnU-Net's values instead
(`inference.resampling.nnunet`, equal to nnU-Net's function on every tested grid): with a model
that is unsure of its organs, the two interpolations move its decisions (BENCHMARKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from inference.core.boxes import foreground_extents
from inference.core.choices import RESAMPLINGS
from inference.engine.model import ModelConfig
from inference.resampling.nnunet import resample_like_nnunet
from inference.resampling.fast import compute_new_shape, resample_torch


# HU outside this range is not tissue: scanner padding (-32768, -3024) and metal streak extremes.
HU_FLOOR, HU_CEILING = -1024.0, 3071.0
SLAB_VOXELS = 2**24  # input voxels per preprocessing slab: 64 MB of float32, 64 slices of 512x512


@dataclass(frozen=True)
class CropBox:
    """Index box (start inclusive, stop exclusive) per array axis."""
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))


@dataclass(frozen=True)
class Preprocessed:
    """The network input and what is needed to map predictions back to the input grid."""
    data: torch.Tensor  # (1, Z, Y, X) float32 at model spacing, transposed per plans
    input_shape: tuple[int, ...]  # shape of the original array
    transposed_shape: tuple[int, ...]  # after transpose_forward
    crop: CropBox  # non-zero box in the transposed array
    spacing_before_resampling: tuple[float, ...]  # transposed order


def sanitize_hu(volume: np.ndarray) -> np.ndarray:
    """Clamp to the physical HU range, so scanner padding values cannot skew normalisation.

    Applied before nnU-Net's normalisation, which clips to the training foreground's
    0.5-99.5 percentiles anyway: for real CT this changes nothing the network sees.
    """
    volume = np.asarray(volume, dtype=np.float32)  # integer scans too; no copy for float32
    return np.clip(volume, HU_FLOOR, HU_CEILING, out=np.empty_like(volume))


def nonzero_box(volume: np.ndarray) -> CropBox:
    """nnU-Net's crop_to_nonzero box. Hole filling inside its mask cannot change the bounding box,
    so the box of `volume != 0` is exactly nnU-Net's."""
    extents = foreground_extents(volume)
    if extents is None:
        return CropBox((0,) * volume.ndim, volume.shape)
    return CropBox(tuple(start for start, _ in extents), tuple(stop for _, stop in extents))


def normalize(volume: np.ndarray, config: ModelConfig) -> np.ndarray:
    if config.normalization == "CTNormalization":
        p = config.intensity
        clipped = np.clip(volume, p.percentile_00_5, p.percentile_99_5)
        return ((clipped - p.mean) / max(p.std, 1e-8)).astype(np.float32, copy=False)
    if config.normalization == "ZScoreNormalization":
        return ((volume - volume.mean()) / max(float(volume.std()), 1e-8)).astype(np.float32, copy=False)
    return volume.astype(np.float32, copy=False)


def preprocess(volume: np.ndarray, spacing: tuple[float, ...], config: ModelConfig,
               device: torch.device | str = "cpu", clamp_hu: bool = False,
               resampling: str = "fast", spline_device: torch.device | str = "cpu") -> Preprocessed:
    """Original (z, y, x) HU array + spacing -> network input at model spacing on `device`.

    `clamp_hu=True` gives the result of `preprocess(sanitize_hu(volume), ...)` without that
    full-size copy. On the CPU, element-wise normalisations and the in-plane resampling run slab
    by slab along the first axis, so no full-resolution float copy of the scan is made (the
    whole-volume path held three: the clipped, centred and scaled arrays, 1 GB each for a
    512x512x1000 CT); the values are those of the whole-volume path, bit for bit. CUDA and the
    cases the slabs cannot reproduce exactly keep the whole-volume path.
    `resampling`: "fast" (area down, linear up) or "nnunet" (nnU-Net's spline, on `spline_device`:
    a CUDA device resizes the planes with CuPy when it is installed).
    """
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling must be one of {RESAMPLINGS}, got {resampling!r}")
    transposed = volume.transpose(config.transpose_forward)
    spacing_t = tuple(spacing[i] for i in config.transpose_forward)
    crop = nonzero_box(transposed)
    target_shape = compute_new_shape(crop.shape, spacing_t, config.spacing)
    if resampling == "nnunet":
        cropped = transposed[crop.slices]  # clamping is element-wise: clamp the crop, not the scan
        normalized = normalize(sanitize_hu(cropped) if clamp_hu else cropped, config)
        settings = config.data_resampling
        resampled = resample_like_nnunet(normalized, target_shape, spacing_t, config.spacing, settings.order,
                                         settings.order_z, settings.force_separate_z,
                                         device=torch.device(spline_device).type)
        tensor = torch.from_numpy(resampled).to(device)[None]
    elif torch.device(device).type == "cpu" and _slabs_are_exact(config, crop.shape, target_shape):
        tensor = _normalize_resample_by_slabs(transposed[crop.slices], config, target_shape, clamp_hu)[None]
    else:
        tensor = _normalize_resample_whole(transposed, crop, config, target_shape, clamp_hu, device)
    return Preprocessed(tensor, tuple(volume.shape), tuple(transposed.shape), crop, spacing_t)


def _normalize_resample_whole(transposed: np.ndarray, crop: CropBox, config: ModelConfig, target_shape,
                              clamp_hu: bool, device) -> torch.Tensor:
    """The original path: the whole crop at once. Clamps before cropping, as the callers used
    to, because z-scoring sums over a view of the clamped volume in its memory order."""
    if clamp_hu:
        transposed = sanitize_hu(transposed)
    normalized = normalize(transposed[crop.slices], config)
    tensor = torch.from_numpy(np.ascontiguousarray(normalized)).to(device)[None]
    if tuple(target_shape) != crop.shape:
        tensor = resample_torch(tensor, target_shape, mode="linear")
    return tensor


def _slabs_are_exact(config: ModelConfig, shape, target_shape) -> bool:
    """Slabs give the whole-volume values when normalisation is element-wise (z-scoring needs
    the whole volume's mean and std) and `resample_torch` would not resize z before the planes:
    it resizes the planes first when both change and the plane-resized intermediate is the
    smaller one (its rule in `_linear_volume`); with only one of them changing there is one pass."""
    if config.normalization == "ZScoreNormalization":
        return False
    (nz, ny, nx), (mz, my, mx) = shape, target_shape
    return nz == mz or (ny, nx) == (my, mx) or nz * my * mx <= mz * ny * nx


def _normalize_resample_by_slabs(cropped: np.ndarray, config: ModelConfig, target_shape,
                                 clamp_hu: bool) -> torch.Tensor:
    """(Z', Y', X') float32: per slab of input slices clamp, normalise and resize the planes
    into a (Z, Y', X') array, then resize z once (same passes as `resample_torch`)."""
    nz = cropped.shape[0]
    planes = torch.empty((nz, *target_shape[1:]), dtype=torch.float32)
    step = max(1, SLAB_VOXELS // max(cropped.shape[1] * cropped.shape[2], 1))
    for z0 in range(0, nz, step):
        slab = cropped[z0:z0 + step]
        slab = normalize(sanitize_hu(slab) if clamp_hu else slab, config)
        slab = torch.from_numpy(np.ascontiguousarray(slab, dtype=np.float32))
        planes[z0:z0 + step] = (resample_torch(slab, (slab.shape[0], *target_shape[1:]), mode="linear")
                                if tuple(slab.shape[1:]) != tuple(target_shape[1:]) else slab)
    if nz == target_shape[0]:
        return planes
    return resample_torch(planes, target_shape, mode="linear")
