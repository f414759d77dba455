"""The whole-map sliding window: the reference `inference.sliding_window.sliding_window_slabs` is
tested against (and the GPU profile's baseline). Holds the logit map of every class at once,
which the engine never does."""
from __future__ import annotations

from typing import Callable

import torch

from inference.engine.sliding_window import _tile_slices, autocast_context, compute_steps, gaussian_importance_map, pad_to_patch


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


def predict_logits(runner, volume, spacing, clamp_hu: bool = False):
    """The whole model-resolution logit map of `runner`'s model (what `ModelRunner.segment` never
    holds) and the preprocessed input: the baseline the streamed path is compared against."""
    from inference.engine.preprocessing import preprocess
    config, options = runner.config, runner.options
    pre = preprocess(volume, spacing, config, device=options.device, clamp_hu=clamp_hu, resampling=options.resampling)
    runner.model.to(options.device)
    logits = predict_sliding_window(runner.model, pre.data, config.patch_size, config.num_classes,
                                    step_size=options.step_size, precision=options.precision)
    return logits, pre
