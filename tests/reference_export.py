"""Whole-map logits -> labels: the reference `inference.export.SlabExport` is tested against
(tests and the GPU profile's baseline). Holds the model-resolution logits of every class at once,
which the engine never does."""
from __future__ import annotations

import numpy as np
import torch

from inference.engine.logits_to_labels import (NO_NEAREST_AXES, _check_method, _input_grid, _interpolate_outputs, argmax_channels,
                              upsample_labels_nearest)
from inference.engine.preprocessing import Preprocessed


def logits_to_labels_interpolated(logits: torch.Tensor, out_shape, plane_kernel: bool | None = None,
                                  nearest_axes: tuple[bool, ...] = NO_NEAREST_AXES, shrink: str = "area"
                                  ) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """Argmax of linearly resized logits, computed only where foreground can appear.

    Returns the labels inside the foreground window and the window's slices in the output grid.
    The in-plane pass uses torch's interpolation kernel on whole planes or per-axis matrix
    products on the window, whichever is cheaper (`plane_kernel` forces one, for tests); both
    give the same values. `nearest_axes`: axes resized by nnU-Net's nearest neighbour instead
    (its export of anisotropic scans: the thick axis with order_z 0); `shrink`: how shrinking axes
    are resized ("area" or nnU-Net's "linear").
    """
    return _interpolate_outputs(logits, 0, tuple(logits.shape[1:]), tuple(out_shape), (0, out_shape[0]), plane_kernel,
                                nearest_axes, shrink=shrink)


def logits_to_labels_nearest(logits: torch.Tensor, out_shape) -> np.ndarray:
    return upsample_labels_nearest(argmax_channels(logits), out_shape)


def export_labels(logits: torch.Tensor, pre: Preprocessed, transpose_backward, method: str = "logits",
                  label_values: list[int] | None = None,
                  nearest_axes: tuple[bool, ...] = NO_NEAREST_AXES, shrink: str = "area") -> np.ndarray:
    """Labels (uint8) on the original input grid from model-resolution logits of one case."""
    _check_method(method)
    full = np.zeros(pre.transposed_shape, dtype=np.uint8)
    if method == "logits":
        labels, window = logits_to_labels_interpolated(logits, pre.crop.shape, nearest_axes=nearest_axes, shrink=shrink)
        if window is not None:
            crop_view = full[pre.crop.slices]
            crop_view[window] = labels
    else:
        full[pre.crop.slices] = logits_to_labels_nearest(logits, pre.crop.shape)
    return _input_grid(full, transpose_backward, label_values)
