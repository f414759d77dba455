"""Channels-last (NDHWC) convolutions on the CPU.

oneDNN, which runs PyTorch's 3D convolutions on x86 CPUs, computes them in a channels-last blocked
layout. A network kept in PyTorch's default NCDHW layout pays a reorder of every feature map into
and out of every convolution; with the weights and the tile in `torch.channels_last_3d` those
reorders go. The arithmetic is the same: on the shipped organ model the logits of a 64x160x160 tile
were bit-identical in bf16 autocast, and the tile took 0.30 s instead of 0.43 s (2-core Intel Xeon,
AMX; BENCHMARKS.md). GPUs keep the default layout (cuDNN's choice; not measured here).
"""
from __future__ import annotations

import torch

LAYOUT = torch.channels_last_3d


class ChannelsLastOnCpu:
    """Wraps a model (a callable with `networks`, e.g. `LeanModel`) whose networks live on the CPU:
    converts their weights to channels-last once, and each 5-D batch on the way in. The logits come
    back in the default layout, so code that adds them into its accumulators sees no change."""

    def __init__(self, model):
        for network in model.networks:
            network.to(memory_format=LAYOUT)
        self.model = model

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.device.type != "cpu" or batch.dim() != 5:
            return self.model(batch)
        return self.model(batch.contiguous(memory_format=LAYOUT)).contiguous()

    def __getattr__(self, name):
        return getattr(self.model, name)
