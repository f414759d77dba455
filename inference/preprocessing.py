"""nnU-Net v2 preprocessing, step for step as its plans say: transpose, crop to non-zero,
normalise, resample to the configuration's spacing.

The only deliberate difference from nnU-Net: resampling to model spacing uses our torch backend
(area down, linear up) instead of nnU-Net's third-order spline (skimage, float64, CPU), which costs
seconds per case for no measurable gain on network inputs (measured in BENCHMARKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from inference.model import ModelConfig
from inference.resampling import compute_new_shape, resample_torch

# HU outside this range is not tissue: scanner padding (-32768, -3024) and metal streak extremes.
HU_FLOOR, HU_CEILING = -1024.0, 3071.0


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
    nonzero = volume != 0
    if not nonzero.any():
        return CropBox((0,) * volume.ndim, volume.shape)
    starts, stops = [], []
    for axis in range(volume.ndim):
        other = tuple(a for a in range(volume.ndim) if a != axis)
        present = np.flatnonzero(nonzero.any(axis=other))
        starts.append(int(present[0]))
        stops.append(int(present[-1]) + 1)
    return CropBox(tuple(starts), tuple(stops))


def normalize(volume: np.ndarray, config: ModelConfig) -> np.ndarray:
    if config.normalization == "CTNormalization":
        p = config.intensity
        clipped = np.clip(volume, p.percentile_00_5, p.percentile_99_5)
        return ((clipped - p.mean) / max(p.std, 1e-8)).astype(np.float32, copy=False)
    if config.normalization == "ZScoreNormalization":
        return ((volume - volume.mean()) / max(float(volume.std()), 1e-8)).astype(np.float32, copy=False)
    return volume.astype(np.float32, copy=False)


def preprocess(volume: np.ndarray, spacing: tuple[float, ...], config: ModelConfig,
               device: torch.device | str = "cpu") -> Preprocessed:
    """Original (z, y, x) HU array + spacing -> network input at model spacing on `device`."""
    transposed = volume.transpose(config.transpose_forward)
    spacing_t = tuple(spacing[i] for i in config.transpose_forward)
    crop = nonzero_box(transposed)
    normalized = normalize(transposed[crop.slices], config)
    target_shape = compute_new_shape(crop.shape, spacing_t, config.spacing)
    tensor = torch.from_numpy(np.ascontiguousarray(normalized)).to(device)[None]
    if tuple(target_shape) != crop.shape:
        tensor = resample_torch(tensor, target_shape, mode="linear")
    return Preprocessed(tensor, tuple(volume.shape), tuple(transposed.shape), crop, spacing_t)
