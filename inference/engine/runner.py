"""One nnU-Net model on one volume: preprocess -> sliding window -> labels on the input grid."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from inference.core.choices import DEVICES, EXPORT_METHODS, PRECISION_CHOICES, PRECISIONS, RESAMPLINGS
from inference.engine.logits_to_labels import NO_NEAREST_AXES, SlabExport
from inference.engine.mirroring import maybe_mirrored
from inference.engine.model import LoadedModel
from inference.resampling.nnunet import nearest_axes
from inference.engine.preprocessing import Preprocessed, preprocess
from inference.engine.sliding_window import predict_sliding_window, sliding_window_slabs

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """The requested device is not available (a fatal environment error)."""


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was requested but no CUDA device is available")
    return torch.device(name)


@dataclass(frozen=True)
class EngineOptions:
    device: torch.device = torch.device("cpu")
    step_size: float = 0.5
    # autocast of the network: fp32, bf16 (CPU) or fp16 (GPU); "auto" is resolved per model by the
    # segmenters (engine.precision) before a ModelRunner sees it
    precision: str = "fp32"
    export: str = "logits"
    # "fast": input area down / linear up, logits linear; "nnunet": nnU-Net's own resampling of the
    # input (third-order spline on the CPU, seconds slower) and of the logits (nearest along the
    # thick axis of anisotropic scans), so that labels match nnU-Net's predictor
    resampling: str = "fast"
    tta: bool = False  # test-time mirroring over the model's allowed axes (engine.mirroring)

    def __post_init__(self):
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {self.precision!r}")
        if self.export not in EXPORT_METHODS:
            raise ValueError(f"export must be one of {EXPORT_METHODS}, got {self.export!r}")
        if self.resampling not in RESAMPLINGS:
            raise ValueError(f"resampling must be one of {RESAMPLINGS}, got {self.resampling!r}")
        if not 0 < self.step_size <= 1:
            raise ValueError(f"step size must be in (0, 1], got {self.step_size}")


class Timer:
    """Accumulates wall time per named step into a dict."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings

    def __call__(self, name: str):
        return _TimedStep(self.timings, name)


class _TimedStep:
    def __init__(self, timings, name):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.start


class ModelRunner:
    """Runs one loaded nnU-Net model with the engine's options.

    `clamp_hu=True` (per call): the input is CT as read, clamped to the physical HU range as part
    of preprocessing (`preprocessing.sanitize_hu`), so callers need no clamped copy of the scan.
    """

    def __init__(self, model: LoadedModel, options: EngineOptions):
        if options.precision not in PRECISIONS:
            raise ValueError(f"a model runs in one of {PRECISIONS}; resolve {options.precision!r} first "
                             "(inference.engine.precision.resolve_precision)")
        self.model = maybe_mirrored(model.to(options.device), options.tta)
        self.options = options
        self.config = model.config

    def predict_logits(self, volume: np.ndarray, spacing, timings: dict[str, float],
                       clamp_hu: bool = False) -> tuple[torch.Tensor, Preprocessed]:
        """The whole model-resolution logit map at once (tests and benchmarks compare `segment`,
        which never holds it, against this)."""
        timer = Timer(timings)
        device = self.options.device
        with timer("preprocess"):
            pre = preprocess(volume, spacing, self.config, device=device, clamp_hu=clamp_hu,
                             resampling=self.options.resampling)
        with timer("network"):
            logits = predict_sliding_window(self.model, pre.data, self.config.patch_size, self.config.num_classes,
                                            step_size=self.options.step_size, precision=self.options.precision)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return logits, pre

    def export_nearest_axes(self, pre: Preprocessed) -> tuple[bool, ...]:
        """Axes the logits return along by nearest neighbour: with resampling "nnunet", nnU-Net's
        thick axis of an anisotropic scan (its order_z 0); none otherwise."""
        if self.options.resampling != "nnunet":
            return NO_NEAREST_AXES
        return nearest_axes(self.config.spacing, pre.spacing_before_resampling, self.config.probability_resampling)

    def segment(self, volume: np.ndarray, spacing, timings: dict[str, float], clamp_hu: bool = False) -> np.ndarray:
        """Labels (uint8, label values of the model's dataset.json) on the grid of `volume`.

        Logits stream from the sliding window into the export z-slab by z-slab, on the CPU and on
        the GPU alike, so memory holds a patch-deep slab of the logit map instead of all of it,
        whatever the scan's length (the whole 14-class map of a 512x512x1000 CT is 3.7 GB; the
        slab of the paper's organ model 0.35 GB). Labels equal the whole-map path's up to float
        rounding (SlabExport).
        """
        if self.options.device.type == "cpu":
            return self._segment_by_slabs(volume, spacing, timings, clamp_hu)
        try:
            return self._segment_by_slabs(volume, spacing, timings, clamp_hu)
        except torch.OutOfMemoryError:
            log.warning("GPU out of memory; this scan's logits accumulate in host RAM instead")
            torch.cuda.empty_cache()
            return self._segment_by_slabs(volume, spacing, timings, clamp_hu, accumulate_device=torch.device("cpu"))

    def _segment_by_slabs(self, volume: np.ndarray, spacing, timings: dict[str, float], clamp_hu: bool,
                          accumulate_device: torch.device | None = None) -> np.ndarray:
        timer = Timer(timings)
        with timer("preprocess"):
            pre = preprocess(volume, spacing, self.config, device=self.options.device, clamp_hu=clamp_hu,
                             resampling=self.options.resampling)
        exporter = SlabExport(pre, pre.data.shape[1:], self.options.export, self.export_nearest_axes(pre))
        slabs = sliding_window_slabs(self.model, pre.data, self.config.patch_size, self.config.num_classes,
                                     step_size=self.options.step_size, precision=self.options.precision,
                                     accumulate_device=accumulate_device)
        while True:
            with timer("network"):
                item = next(slabs, None)
            if item is None:
                break
            with timer("export"):
                exporter.add(*item)
            del item
        with timer("export"):
            return exporter.labels(self.config.transpose_backward, self.config.label_values)
