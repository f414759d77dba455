"""A U-Net forward pass that drops each feature map as soon as nothing reads it any more.

dynamic-network-architectures' `PlainConvUNet.forward` keeps every skip until the decoder ends
and each block's input until the block returns: at full resolution it holds 5 C0 V0 elements
plus all skips (`device_memory.forward_bytes`). Here the same modules run in the same order on
the same tensors, so the logits are equal bit for bit, but a skip is released by its
concatenation and a block's input by its first operation: the peak is the concatenation of the
last skip with its upsampled partner while both still exist, 4 C0 V0 plus the skips still
waiting (a third less for the paper's organ network). Other architectures run their own forward.
"""
from __future__ import annotations

import torch
from torch import nn


def is_lean(network) -> bool:
    """Whether `lean_forward` reproduces this network's forward: a plain nnU-Net U-Net."""
    return type(network).__name__ == "PlainConvUNet" and not getattr(network.decoder, "deep_supervision", False)


def lean_forward(network, batch: torch.Tensor) -> torch.Tensor:
    """`network(batch)` of a PlainConvUNet (`is_lean`), holding fewer feature maps at a time."""
    skips = []
    x = batch
    for stage in network.encoder.stages:
        x = _run_chain(stage, [x])
        skips.append(x)
    del x
    decoder = network.decoder
    lower = skips.pop()
    for transpconv, stage in zip(decoder.transpconvs, decoder.stages):
        up = transpconv(lower)
        del lower
        joined = [torch.cat((up, skips.pop()), 1)]  # the skip is released with the tuple
        del up
        lower = _run_chain(stage, joined)
    return decoder.seg_layers[-1](lower)


def _run_chain(module: nn.Module, holder: list[torch.Tensor]) -> torch.Tensor:
    """The module's leaves one after the other; the input, handed over in `holder`, is released
    by the first of them."""
    x = holder.pop()
    for leaf in _leaves(module):
        x = leaf(x)
    return x


def _leaves(module: nn.Module):
    """Sequential containers, `StackedConvBlocks` (.convs) and `ConvDropoutNormReLU` (.all_modules)
    unrolled: each of their forwards is the sequence of these leaves."""
    if isinstance(module, nn.Sequential):
        children = module
    elif type(module).__name__ == "ConvDropoutNormReLU":
        children = module.all_modules
    elif type(module).__name__ == "StackedConvBlocks":
        children = module.convs
    else:
        yield module
        return
    for child in children:
        yield from _leaves(child)


class LeanModel:
    """A LoadedModel whose networks run `lean_forward` where they can; the folds are averaged
    exactly as `LoadedModel.__call__` does. Forwards `config`, `to`, `networks`, ..."""

    def __init__(self, model):
        self.model = model

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        networks = self.model.networks
        logits = _forward(networks[0], batch)
        for network in networks[1:]:
            logits = logits + _forward(network, batch)
        return logits / len(networks) if len(networks) > 1 else logits

    def __getattr__(self, name):
        return getattr(self.model, name)


def _forward(network, batch: torch.Tensor) -> torch.Tensor:
    return lean_forward(network, batch) if is_lean(network) else network(batch)
