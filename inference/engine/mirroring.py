"""Test-time mirroring (`--tta`): nnU-Net's `_internal_maybe_mirror_and_predict` as a wrapper
around any network callable.

The network runs on the patch and on every non-empty combination of flips along the model's
allowed mirroring axes (the checkpoint's `inference_allowed_mirroring_axes`, in the network's axis
order); each prediction is flipped back and the logits are averaged: 2^k passes for k axes (8 for
nnU-Net's usual (0, 1, 2)). The sliding window, the Gaussian weighting and the export do not change.
The sum is kept in float32 whatever the autocast precision.
"""
from __future__ import annotations

import itertools
import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)
Network = Callable[[torch.Tensor], torch.Tensor]


def mirror_combinations(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """nnU-Net's order: single axes first, then pairs, ...; axes of a (B, C, *spatial) batch."""
    batch_axes = [int(a) + 2 for a in axes]
    return [c for size in range(1, len(batch_axes) + 1) for c in itertools.combinations(batch_axes, size)]


class MirroredNetwork:
    """`network` averaged over mirrored copies of its input; forwards `config` and `to`, so it
    stands in for a LoadedModel wherever the engine runs one."""

    def __init__(self, network: Network, allowed_axes: tuple[int, ...] | None):
        self.network = network
        self.combinations = mirror_combinations(tuple(allowed_axes or ()))

    @property
    def passes(self) -> int:
        return 1 + len(self.combinations)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim < 3 or max((max(c) for c in self.combinations), default=0) >= batch.ndim:
            raise ValueError(f"mirroring axes {self.combinations} do not fit a batch of shape {tuple(batch.shape)}")
        prediction = self.network(batch).float()
        for axes in self.combinations:
            prediction += torch.flip(self.network(torch.flip(batch, axes)), axes).float()
        return prediction / self.passes if self.combinations else prediction

    def __getattr__(self, name):  # config, networks, folder, ... of the wrapped model
        return getattr(self.network, name)


def maybe_mirrored(model, enabled: bool):
    """The model itself, or wrapped in test-time mirroring over its `config.allowed_mirroring_axes`."""
    if enabled and not model.config.allowed_mirroring_axes:
        # nnU-Net's predictor does the same: a model trained without mirroring allows none
        log.warning("%s: the checkpoint allows no mirroring axes; --tta changes nothing", model.config.name)
    return MirroredNetwork(model, model.config.allowed_mirroring_axes) if enabled else model
