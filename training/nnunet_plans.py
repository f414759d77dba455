"""nnU-Net plans for the recipe: nnU-Net's own `nnUNetPlans.json` with a chosen spacing, patch, batch
and a (small) network whose strides and kernels are consistent with that patch (`derive_plans`,
`unet_topology`, the same rules as nnU-Net's `get_pool_and_conv_props`).
"""
from __future__ import annotations

import copy
from typing import Sequence

MIN_FEATURE_MAP_SIZE = 4  # nnU-Net's UNet_featuremap_min_edge_length: a stride-2 axis needs >= 8 voxels
ANISOTROPY_RATIO = 2.0  # nnU-Net: axes within a factor 2 of the finest spacing are pooled / get 3-wide kernels


def unet_topology(patch_size: Sequence[int], spacing: Sequence[float], n_stages: int,
                  min_feature_map_size: int = MIN_FEATURE_MAP_SIZE
                  ) -> tuple[list[list[int]], list[list[int]]]:
    """(kernel_sizes, strides) of an `n_stages` U-Net encoder, by nnU-Net's rules.

    Following nnU-Net's `get_pool_and_conv_props`: at each stage an axis is downsampled (stride 2)
    if its feature map is at least 2 * min_feature_map_size and its current spacing is within a
    factor 2 of the finest spacing among such axes (a single such axis needs 3 * min size);
    kernels are 3 along axes within a factor 2 of the finest current spacing, else 1 (e.g.
    1x3x3 on thick slices), and once 3 they stay 3; the bottleneck kernel is all 3.
    Raises ValueError if the patch cannot take `n_stages` stages or is not divisible by the
    total stride of an axis.
    """
    dim = len(patch_size)
    if len(spacing) != dim or n_stages < 1:
        raise ValueError(f"patch {tuple(patch_size)} and spacing {tuple(spacing)} must have equal length, n_stages >= 1")
    size = [int(s) for s in patch_size]
    current_spacing = [float(s) for s in spacing]
    kernel = [1] * dim
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * dim]
    for stage in range(n_stages - 1):
        finest = min(current_spacing)
        kernel = [3 if k == 3 or current_spacing[d] / finest < ANISOTROPY_RATIO else 1 for d, k in enumerate(kernel)]
        kernels.append(list(kernel))
        poolable = [d for d in range(dim) if size[d] >= 2 * min_feature_map_size]
        if poolable:
            finest_poolable = min(current_spacing[d] for d in poolable)
            poolable = [d for d in poolable if current_spacing[d] / finest_poolable < ANISOTROPY_RATIO]
        if len(poolable) == 1 and size[poolable[0]] < 3 * min_feature_map_size:
            poolable = []
        if not poolable:
            raise ValueError(f"patch {tuple(patch_size)} at spacing {tuple(spacing)} allows only {stage + 1} "
                             f"stages (feature maps {size} at stage {stage}), {n_stages} requested")
        for d in poolable:
            if size[d] % 2:
                raise ValueError(f"patch {tuple(patch_size)}: axis {d} is {size[d]} voxels at stage {stage}, "
                                 f"not divisible by 2; choose a patch divisible by the total stride")
            size[d] //= 2
            current_spacing[d] *= 2
        strides.append([2 if d in poolable else 1 for d in range(dim)])
    kernels.append([3] * dim)
    return kernels, strides


def derive_plans(plans: dict, *, plans_name: str, configuration: str = "3d_fullres",
                 spacing: Sequence[float] | None = None, patch_size: Sequence[int] | None = None,
                 batch_size: int | None = None, features_per_stage: Sequence[int] | None = None,
                 n_stages: int | None = None, n_conv_per_stage: int = 2,
                 n_conv_per_stage_decoder: int = 2) -> dict:
    """Custom plans holding only `configuration`, copied from nnU-Net's plans with overrides.

    Every key nnU-Net wrote is kept (normalisation, resampling functions, intensity properties,
    transposes, architecture class and its imports); only spacing, patch, batch and the encoder
    layout change. The network is re-derived when patch, features or stages are given, so that its
    strides fit the patch (see `unet_topology`). The data identifier is `<plans_name>_<configuration>`
    so that preprocessed data of different plans never mix.
    """
    if configuration not in plans["configurations"]:
        raise ValueError(f"configuration {configuration!r} not in plans; available: {sorted(plans['configurations'])}")
    config = resolved_configuration(plans, configuration)
    for key in ("inherits_from", "previous_stage", "next_stage"):
        config.pop(key, None)
    if spacing is not None:
        old = config["spacing"]
        config["spacing"] = [float(s) for s in spacing]
        config["median_image_size_in_voxels"] = [
            round(n * o / s, 1) for n, o, s in zip(config["median_image_size_in_voxels"], old, config["spacing"])]
    if patch_size is not None:
        config["patch_size"] = [int(p) for p in patch_size]
    if batch_size is not None:
        config["batch_size"] = int(batch_size)
    arch = config["architecture"]["arch_kwargs"]
    if patch_size is not None or features_per_stage is not None or n_stages is not None or spacing is not None:
        if features_per_stage is not None and n_stages is not None and len(features_per_stage) != n_stages:
            raise ValueError(f"features_per_stage has {len(features_per_stage)} entries, n_stages is {n_stages}")
        stages = n_stages or (len(features_per_stage) if features_per_stage is not None else arch["n_stages"])
        features = list(features_per_stage) if features_per_stage is not None else [
            min(32 * 2 ** i, 320) for i in range(stages)]
        kernels, strides = unet_topology(config["patch_size"], config["spacing"], stages)
        arch.update({
            "n_stages": stages,
            "features_per_stage": [int(f) for f in features],
            "kernel_sizes": kernels,
            "strides": strides,
            "n_conv_per_stage": [int(n_conv_per_stage)] * stages,
            "n_conv_per_stage_decoder": [int(n_conv_per_stage_decoder)] * (stages - 1),
        })
    config["data_identifier"] = f"{plans_name}_{configuration}"
    derived = copy.deepcopy({k: v for k, v in plans.items() if k != "configurations"})
    derived["plans_name"] = plans_name
    derived["configurations"] = {configuration: config}
    return derived


def resolved_configuration(plans: dict, configuration: str) -> dict:
    """A configuration with nnU-Net's `inherits_from` chain merged in (child keys win)."""
    config = copy.deepcopy(plans["configurations"][configuration])
    parent = config.get("inherits_from")
    if parent is not None:
        base = resolved_configuration(plans, parent)
        base.update(config)
        config = base
    return config


def default_features(patch_size: Sequence[int], spacing: Sequence[float], max_stages: int = 7) -> tuple[int, ...]:
    """nnU-Net's default width (32 doubling to 320) with as many stages as the patch allows."""
    for stages in range(max_stages, 0, -1):
        try:
            unet_topology(patch_size, spacing, stages)
        except ValueError:
            continue
        return tuple(min(32 * 2 ** i, 320) for i in range(stages))
    raise ValueError(f"patch {tuple(patch_size)} allows no U-Net at spacing {tuple(spacing)}")


# nnU-Net 2.8's planner names LeakyReLU by its short alias; the engine's allowlist (inference.engine.model)
# knows the class by its defining module. Both resolve to the same class in nnU-Net (pydoc.locate),
# so the plans we write use the full name and the exported folders load everywhere.
CLASS_NAME_ALIASES = {"torch.nn.LeakyReLU": "torch.nn.modules.activation.LeakyReLU",
                      "torch.nn.ReLU": "torch.nn.modules.activation.ReLU"}


def canonical_class_names(plans: dict) -> dict:
    """Plans with every architecture building block named by its defining module (in place)."""
    for config in plans["configurations"].values():
        kwargs = config.get("architecture", {}).get("arch_kwargs", {})
        for key, value in kwargs.items():
            if isinstance(value, str) and value in CLASS_NAME_ALIASES:
                kwargs[key] = CLASS_NAME_ALIASES[value]
    return plans
