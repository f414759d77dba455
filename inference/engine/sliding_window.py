"""Sliding-window prediction with Gaussian importance weighting (nnU-Net v2 semantics).

`predict_sliding_window` takes any callable as the network (MONAI's lesson): tests drive it with
identity and affine "networks" and demand exact results. Tile positions, the Gaussian and the
padding follow nnU-Net v2 exactly so that our logits match its predictor's.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from inference.core.choices import PRECISIONS

log = logging.getLogger(__name__)


def compute_steps(image_size, patch_size, step_size: float) -> list[list[int]]:
    """Tile start positions per axis: nnU-Net's rule (evenly spread, overlap >= 1 - step_size)."""
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    steps = []
    for image, patch in zip(image_size, patch_size):
        if image < patch:
            raise ValueError(f"image size {tuple(image_size)} smaller than patch {tuple(patch_size)}; pad first")
        count = int(np.ceil((image - patch) / (patch * step_size))) + 1
        stride = (image - patch) / (count - 1) if count > 1 else 0
        steps.append([int(np.round(stride * i)) for i in range(count)])
    return steps


@lru_cache(maxsize=4)
def _gaussian_numpy(patch_size: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    impulse = np.zeros(patch_size)
    impulse[tuple(p // 2 for p in patch_size)] = 1
    gaussian = gaussian_filter(impulse, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    gaussian /= gaussian.max() / 10  # nnU-Net's value_scaling_factor
    # zeros at the border would divide by zero where only one tile covers a voxel
    gaussian[gaussian == 0] = gaussian[gaussian != 0].min()
    return gaussian.astype(np.float32)


def gaussian_importance_map(patch_size, sigma_scale: float = 1 / 8, device="cpu") -> torch.Tensor:
    return torch.from_numpy(_gaussian_numpy(tuple(int(p) for p in patch_size), sigma_scale)).to(device)


def pad_to_patch(volume: torch.Tensor, patch_size) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes of (C, Z, Y, X) up to the patch size, split evenly like nnU-Net.

    Returns the padded tensor and the slices that recover the original region.
    """
    spatial = volume.shape[1:]
    before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch_size)]
    after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch_size, before)]
    if not any(before) and not any(after):
        return volume, tuple(slice(None) for _ in spatial)
    padding = []
    for b, a in zip(reversed(before), reversed(after)):  # F.pad wants the last axis first
        padding += [b, a]
    padded = torch.nn.functional.pad(volume, padding, mode="constant", value=0)
    return padded, tuple(slice(b, b + s) for b, s in zip(before, spatial))


def autocast_context(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _tile_slices(steps: list[list[int]], patch_size) -> list[tuple[slice, ...]]:
    grids = np.meshgrid(*steps, indexing="ij")
    starts = np.stack([g.ravel() for g in grids], axis=1)
    return [tuple(slice(int(s), int(s) + p) for s, p in zip(start, patch_size)) for start in starts]


@torch.inference_mode()
def predict_sliding_window(network: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor,
                           patch_size, num_classes: int, *, step_size: float = 0.5,
                           precision: str = "fp32", accumulate_dtype: torch.dtype = torch.float32,
                           accumulate_device: torch.device | str | None = None,
                           use_gaussian: bool = True) -> torch.Tensor:
    """Logits (num_classes, Z, Y, X) for a (C, Z, Y, X) volume.

    The network runs on `volume.device`; logits are accumulated on `accumulate_device` (default: the
    same device), so a GPU run that lacks memory for the full logit map can keep it in host RAM.
    """
    compute_device = volume.device
    accumulate_device = torch.device(accumulate_device) if accumulate_device is not None else compute_device
    padded, unpad = pad_to_patch(volume, patch_size)
    spatial = tuple(padded.shape[1:])
    logits = torch.zeros((num_classes, *spatial), dtype=accumulate_dtype, device=accumulate_device)
    weights = torch.zeros(spatial, dtype=torch.float32, device=accumulate_device)
    gaussian = (gaussian_importance_map(patch_size, device=compute_device) if use_gaussian
                else torch.ones(tuple(patch_size), device=compute_device))
    gaussian_acc = gaussian.to(accumulate_device)
    tiles = _tile_slices(compute_steps(spatial, patch_size, step_size), patch_size)
    with autocast_context(compute_device, precision):
        for tile in tiles:
            prediction = network(padded[(slice(None), *tile)][None])[0]
            weighted = (prediction.float() * gaussian).to(accumulate_device, accumulate_dtype)
            logits[(slice(None), *tile)] += weighted
            weights[tile] += gaussian_acc
    logits /= weights.to(accumulate_dtype)
    return logits[(slice(None), *unpad)]


@torch.inference_mode()
def sliding_window_slabs(network: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor,
                         patch_size, num_classes: int, *, step_size: float = 0.5, precision: str = "fp32",
                         accumulate_device: torch.device | str | None = None,
                         use_gaussian: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """`predict_sliding_window`'s logits, yielded as finished z-slabs: (z0, logits[:, z0:z1]) in order.

    Tiles run in the same z-major order and every voxel receives the same additions and the same
    division, so the concatenated slabs equal `predict_sliding_window`'s float32 result bit for
    bit. Tile starts only grow along z, so rows above the next tile's start are final: they are
    normalised and handed out, and only a patch-deep accumulator is ever held. Memory is therefore
    the same for 100 or 10000 slices (the full map of a 512x512x1000 CT is 3.7 GB for 14 classes).
    Autocast wraps the network call alone: it must not leak into the consumer while we are suspended.
    `accumulate_device` (default: the volume's) holds the accumulator and receives the slabs: host
    RAM for a GPU run that has no room for it (the values are the same).
    """
    compute_device = volume.device
    accumulate_device = torch.device(accumulate_device) if accumulate_device is not None else compute_device
    padded, unpad = pad_to_patch(volume, patch_size)
    spatial = tuple(padded.shape[1:])
    depth = int(patch_size[0])
    accumulator = torch.zeros((num_classes, depth, *spatial[1:]), dtype=torch.float32, device=accumulate_device)
    weights = torch.zeros((depth, *spatial[1:]), dtype=torch.float32, device=accumulate_device)
    gaussian = (gaussian_importance_map(patch_size, device=accumulate_device) if use_gaussian
                else torch.ones(tuple(patch_size), device=accumulate_device))
    origin = 0  # padded z index of the accumulator's first row
    for tile in _tile_slices(compute_steps(spatial, patch_size, step_size), patch_size):
        start = tile[0].start
        if start > origin:
            yield from _unpadded(origin, accumulator[:, :start - origin] / weights[:start - origin], unpad)
            _shift_rows(accumulator, 1, start - origin)
            _shift_rows(weights, 0, start - origin)
            origin = start
        with autocast_context(compute_device, precision):
            prediction = network(padded[(slice(None), *tile)][None])[0]
        local = (slice(0, depth), *tile[1:])
        accumulator[(slice(None), *local)] += prediction.float().to(accumulate_device) * gaussian
        weights[local] += gaussian
    yield from _unpadded(origin, accumulator[:, :spatial[0] - origin] / weights[:spatial[0] - origin], unpad)


def _shift_rows(buffer: torch.Tensor, dim: int, count: int) -> None:
    """Drop the first `count` rows along `dim`, move the rest to the front, zero the freed tail."""
    keep = buffer.shape[dim] - count
    if keep < 0:
        raise AssertionError(f"tile stride {count} exceeds the patch depth {buffer.shape[dim]}")
    if keep:
        buffer.narrow(dim, 0, keep).copy_(buffer.narrow(dim, count, keep).clone())  # clone: ranges overlap
    buffer.narrow(dim, keep, count).zero_()


def _unpadded(origin: int, rows: torch.Tensor, unpad: tuple[slice, ...]) -> Iterator[tuple[int, torch.Tensor]]:
    """The part of padded rows [origin, origin + len) inside the unpadded volume, in its coordinates."""
    z_slice, y_slice, x_slice = unpad
    first = max(origin, z_slice.start or 0)
    last = min(origin + rows.shape[1], z_slice.stop if z_slice.stop is not None else origin + rows.shape[1])
    if last > first:
        yield first - (z_slice.start or 0), rows[:, first - origin:last - origin, y_slice, x_slice]
