"""Sliding-window prediction with Gaussian importance weighting (nnU-Net v2 semantics).

`sliding_window_slabs` takes any callable as the network (MONAI's lesson): tests drive it with
identity and affine "networks" and demand exact results. Tile positions, the Gaussian and the
padding follow nnU-Net v2 exactly so that our logits match its predictor's. The whole-map
reference it is tested against lives in tests/reference_sliding_window.py.

Memory: the network input stays where it is (host RAM in the engine) and each tile travels to
the compute device on its own; the logits of one patch-deep slab accumulate on the device (or in
host RAM, `Placement.accumulate_on_device=False`), so the device holds a tile, its activations
and one slab whatever the scan's length. Every device buffer is reported to the active
`device_memory` ledger.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from inference.core.choices import PRECISIONS
from inference.engine.device_memory import active_ledger

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
    """nnU-Net's `compute_gaussian`: scipy's gaussian_filter of a centred impulse (mode constant,
    truncate 4), written as the product of scipy's 1D kernels it equals bit for bit (each pass
    multiplies one non-zero sample), so the hot path does not import scipy.ndimage."""
    gaussian = np.ones((1,) * len(patch_size))
    for axis, size in enumerate(patch_size):
        shape = [1] * len(patch_size)
        shape[axis] = size
        gaussian = _kernel_at_impulse(size, size * sigma_scale).reshape(shape) * gaussian
    gaussian /= gaussian.max() / 10  # nnU-Net's value_scaling_factor
    # zeros at the border would divide by zero where only one tile covers a voxel
    gaussian[gaussian == 0] = gaussian[gaussian != 0].min()
    return gaussian.astype(np.float32)


def _kernel_at_impulse(size: int, sigma: float) -> np.ndarray:
    """scipy.ndimage's order-0 Gaussian kernel (radius int(4 sigma + 0.5)) centred on index
    size // 2 of an axis of `size` samples, zero beyond the kernel's reach."""
    radius = int(4.0 * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / (float(sigma) * float(sigma)) * x ** 2)
    kernel = kernel / kernel.sum()
    offsets = np.arange(size) - size // 2
    inside = np.abs(offsets) <= radius
    values = np.zeros(size)
    values[inside] = kernel[offsets[inside] + radius]
    return values


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


@dataclass(frozen=True)
class Placement:
    """Where the sliding window works. `compute`: the network's device (None: the volume's);
    `accumulate_on_device=False`: the logit slab accumulates in host RAM (a GPU short of memory);
    `forward_bytes`: the activation peak of one tile's forward pass, for the ledger."""
    compute: torch.device | None = None
    accumulate_on_device: bool = True
    forward_bytes: int = 0
    element_bytes: int = 4  # of the network's output under the device's precision (fp16: 2)

    def devices(self, volume: torch.Tensor) -> tuple[torch.device, torch.device]:
        compute = torch.device(self.compute) if self.compute is not None else volume.device
        return compute, compute if self.accumulate_on_device else torch.device("cpu")


@torch.inference_mode()
def sliding_window_slabs(network: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor,
                         patch_size, num_classes: int, *, step_size: float = 0.5, precision: str = "fp32",
                         placement: Placement = Placement(),
                         use_gaussian: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """Logits (num_classes, Z, Y, X) of a (C, Z, Y, X) volume, yielded as finished z-slabs:
    (z0, logits[:, z0:z1]) in order, on the accumulating device.

    Tiles run in z-major order; tile starts only grow along z, so rows above the next tile's start
    are final: they are normalised and handed out, and only a patch-deep accumulator is ever held.
    Every voxel receives the same additions and the same division as in a whole-map accumulation
    (tests/reference_sliding_window.py), so the slabs equal it bit for bit. Memory is the same for
    100 or 10000 slices. Autocast wraps the network call alone: it must not leak into the consumer
    while we are suspended.
    """
    compute, accumulate = placement.devices(volume)
    ledger = active_ledger()
    padded, unpad = pad_to_patch(volume, patch_size)
    spatial = tuple(padded.shape[1:])
    depth = int(patch_size[0])
    accumulator = torch.zeros((num_classes, depth, *spatial[1:]), dtype=torch.float32, device=accumulate)
    weights = torch.zeros((depth, *spatial[1:]), dtype=torch.float32, device=accumulate)
    gaussian = (gaussian_importance_map(patch_size, device=accumulate) if use_gaussian
                else torch.ones(tuple(patch_size), device=accumulate))
    held = ledger.hold(_nbytes(accumulator, weights, gaussian)) if placement.accumulate_on_device else None
    # On the host one buffer takes every tile's weighted logits: a fresh 14-class float tile per
    # step costs the kernel's zeroing of its pages (1.2 s of a clinical-size CPU case). The values
    # are the same (torch.mul promotes a half-precision tile to float32 exactly, as .float() does).
    # A device accumulator keeps the expression its memory ledger was calibrated on.
    weighted = (torch.empty((num_classes, *patch_size), dtype=torch.float32, device=accumulate)
                if accumulate.type == "cpu" else None)
    origin = 0  # padded z index of the accumulator's first row
    try:
        for tile in _tile_slices(compute_steps(spatial, patch_size, step_size), patch_size):
            start = tile[0].start
            if start > origin:
                yield from _unpadded(origin, accumulator[:, :start - origin] / weights[:start - origin], unpad)
                _shift_rows(accumulator, 1, start - origin)
                _shift_rows(weights, 0, start - origin)
                origin = start
            prediction = _run_tile(network, padded[(slice(None), *tile)][None], compute, precision, placement)
            local = (slice(0, depth), *tile[1:])
            if weighted is not None:
                accumulator[(slice(None), *local)] += torch.mul(prediction.to(accumulate), gaussian, out=weighted)
            else:
                accumulator[(slice(None), *local)] += prediction.to(accumulate).float() * gaussian
            weights[local] += gaussian
            del prediction
        yield from _unpadded(origin, accumulator[:, :spatial[0] - origin] / weights[:spatial[0] - origin], unpad)
    finally:
        ledger.release(held)


def _run_tile(network, tile: torch.Tensor, compute: torch.device, precision: str, placement: Placement) -> torch.Tensor:
    """One tile through the network on `compute`; the ledger sees the tile, the forward's
    activations and, when the accumulator is on the device, the float copy and the weighted one."""
    ledger = active_ledger()
    tile = tile.to(compute, non_blocking=True)
    with ledger.holding(tile.numel() * 4):
        ledger.transient(placement.forward_bytes)
        with autocast_context(compute, precision):
            prediction = network(tile)[0]
        extra = 2 * prediction.numel() * 4 if placement.accumulate_on_device else 0
        ledger.transient(prediction.numel() * placement.element_bytes + extra)
    return prediction


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


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
