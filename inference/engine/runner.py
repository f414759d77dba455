"""One nnU-Net model on one volume: preprocess -> sliding window -> labels on the input grid."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from inference.core.choices import DEVICES, EXPORT_METHODS, PRECISION_CHOICES, PRECISIONS, RESAMPLINGS
from inference.engine.device_memory import (DEFAULT_BUDGET_MB, MemoryPlan, NetworkCost, UNetShape, active_ledger,
                                     plan_tiles, precision_bytes, stride_divisors, weight_bytes)
from inference.engine.logits_to_labels import NO_NEAREST_AXES, SlabExport
from inference.engine.cpu_layout import ChannelsLastOnCpu
from inference.engine.lean_forward import LeanModel
from inference.engine.mirroring import maybe_mirrored
from inference.engine.model import LoadedModel
from inference.resampling.nnunet import nearest_axes
from inference.engine.preprocessing import Preprocessed, preprocess
from inference.engine.sliding_window import Placement, sliding_window_slabs

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
    # Tensors the engine may keep on the device, in MB (tiles, accumulator, export and weights are
    # planned to fit; inference.engine.device_memory). None: DEFAULT_BUDGET_MB on CUDA, no budget on the
    # CPU; 0: no budget (the trained patch, weights resident, the scan preprocessed on the device).
    # Set on a CPU run, the CPU follows the GPU's plan (its twin) and the ledger predicts the GPU.
    gpu_memory_budget_mb: float | None = None

    @property
    def memory_budget_mb(self) -> float | None:
        if self.gpu_memory_budget_mb is None:
            return DEFAULT_BUDGET_MB if self.device.type == "cuda" else None
        return self.gpu_memory_budget_mb or None

    def __post_init__(self):
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {self.precision!r}")
        if self.export not in EXPORT_METHODS:
            raise ValueError(f"export must be one of {EXPORT_METHODS}, got {self.export!r}")
        if self.resampling not in RESAMPLINGS:
            raise ValueError(f"resampling must be one of {RESAMPLINGS}, got {self.resampling!r}")
        if self.gpu_memory_budget_mb is not None and self.gpu_memory_budget_mb < 0:
            raise ValueError(f"GPU memory budget must be >= 0 MB, got {self.gpu_memory_budget_mb}")
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

    With a memory budget the network input stays in host RAM (preprocessed there, in slabs), the
    weights go to the device only while this model runs, and `device_memory.plan_tiles` sizes the
    tiles and places the accumulator; every device buffer is reported to the active ledger.
    """

    def __init__(self, model: LoadedModel, options: EngineOptions):
        if options.precision not in PRECISIONS:
            raise ValueError(f"a model runs in one of {PRECISIONS}; resolve {options.precision!r} first "
                             "(inference.engine.precision.resolve_precision)")
        self.options = options
        self.budget_mb = options.memory_budget_mb
        # lean_forward: the same logits bit for bit with a third fewer feature maps held at once
        network_fn = LeanModel(model.to(torch.device("cpu") if self.budget_mb else options.device))
        if options.device.type == "cpu":  # a budget means a GPU computes: its weights only wait on the host
            network_fn = ChannelsLastOnCpu(network_fn)
        self.model = maybe_mirrored(network_fn, options.tta)
        self.config = model.config
        network = model.networks[0]
        self.cost = NetworkCost(UNetShape.of(network), weight_bytes(network) * len(model.networks),
                                sum(p.numel() for p in network.parameters()) * len(model.networks))

    def export_nearest_axes(self, pre: Preprocessed) -> tuple[bool, ...]:
        """Axes the logits return along by nearest neighbour: with resampling "nnunet", nnU-Net's
        thick axis of an anisotropic scan (its order_z 0); none otherwise."""
        if self.options.resampling != "nnunet":
            return NO_NEAREST_AXES
        settings = self.config.probability_resampling
        return nearest_axes(self.config.spacing, pre.spacing_before_resampling, settings.order_z,
                            settings.force_separate_z)

    def export_shrink(self) -> str:
        """How the logits return along an axis that shrinks (a scan coarser than the model's
        spacing): nnU-Net's two-tap linear interpolation with resampling "nnunet", as nnU-Net's
        export does; averaging otherwise."""
        return "linear" if self.options.resampling == "nnunet" else "area"

    def memory_plan(self, network_input_shape) -> MemoryPlan:
        """Tile size and accumulator placement for a network input of (Z, Y, X) at model spacing."""
        return plan_tiles(self.cost, self.config.patch_size, self.config.num_classes, network_input_shape,
                          self.options.precision, self.budget_mb, stride_divisors(self.cost.unet))

    def segment(self, volume: np.ndarray, spacing, timings: dict[str, float], clamp_hu: bool = False) -> np.ndarray:
        """Labels (uint8, label values of the model's dataset.json) on the grid of `volume`.

        Logits stream from the sliding window into the export z-slab by z-slab, so memory holds a
        patch-deep slab of the logit map instead of all of it, whatever the scan's length (the
        whole 14-class map of a 512x512x1000 CT is 3.7 GB). Labels equal the whole-map path's up
        to float rounding (SlabExport). A GPU that runs out of memory all the same retries with
        the logits in host RAM and tiles half as deep (reported in the ledger's fallbacks).
        """
        ledger, timer = active_ledger(), Timer(timings)
        with ledger.stage(self.config.name), self._weights_on_device():
            with timer("preprocess"):
                host = self.budget_mb is not None or self.options.device.type == "cpu"
                pre = preprocess(volume, spacing, self.config, device="cpu" if host else self.options.device,
                                 clamp_hu=clamp_hu, resampling=self.options.resampling,
                                 spline_device=self.options.device)
            plan = self.memory_plan(pre.data.shape[1:])
            for note in plan.describe(self.config.patch_size):
                log.info("%s: %s", self.config.name, note)
                ledger.events.append(f"{self.config.name}: {note}")
            if not _retries_out_of_memory(self.options.device):
                return self._segment_planned(pre, plan, timer)
            try:
                return self._segment_planned(pre, plan, timer)
            except torch.OutOfMemoryError:
                fallback = _fallback_plan(plan, self.config.patch_size, stride_divisors(self.cost.unet))
                message = (f"{self.config.name}: GPU out of memory; retried with "
                           f"{'; '.join(fallback.describe(self.config.patch_size))}")
                log.warning("%s", message)
                ledger.events.append(message)
            # retried outside the handler: its traceback would keep the failed attempt's buffers alive
            torch.cuda.empty_cache()
            return self._segment_planned(pre, fallback, timer)

    def _segment_planned(self, pre: Preprocessed, plan: MemoryPlan, timer: "Timer") -> np.ndarray:
        ledger, options = active_ledger(), self.options
        placement = Placement(options.device, plan.accumulate_on_device,
                              self.cost.forward(plan.tile, precision_bytes(options.precision))
                              + (self.cost.parameters * 2 if options.precision != "fp32" else 0),
                              precision_bytes(options.precision))
        exporter = SlabExport(pre, pre.data.shape[1:], options.export, self.export_nearest_axes(pre),
                              working_bytes=plan.export_bytes if self.budget_mb else None,
                              shrink=self.export_shrink())
        slabs = sliding_window_slabs(self.model, pre.data, plan.tile, self.config.num_classes,
                                     step_size=options.step_size, precision=options.precision, placement=placement)
        while True:
            with timer("network"), ledger.stage("network"):
                item = next(slabs, None)
            if item is None:
                break
            with timer("export"), ledger.stage("export"):
                if plan.accumulate_on_device:
                    ledger.transient(2 * (exporter.held_bytes() + item[1].numel() * 4) + plan.export_bytes)
                exporter.add(*item)
            del item
        with timer("export"):
            return exporter.labels(self.config.transpose_backward, self.config.label_values)

    @contextlib.contextmanager
    def _weights_on_device(self):
        """With a budget the weights visit the device while this model runs; without one they live there."""
        if not self.budget_mb:
            yield
            return
        with active_ledger().holding(self.cost.weights):
            self.model.to(self.options.device)
            try:
                yield
            finally:
                self.model.to(torch.device("cpu"))


def _retries_out_of_memory(device: torch.device) -> bool:
    """Only a GPU gets a second plan after running out of memory (host RAM has no budget)."""
    return device.type == "cuda"


def _fallback_plan(plan: MemoryPlan, patch, divisors) -> MemoryPlan:
    """After an out-of-memory error: logits in host RAM and tiles half as deep, in steps the
    network's strides allow (never under a quarter of the patch)."""
    step = max(int(divisors[0]), 1)
    depth = max(plan.tile[0] // 2 // step * step, int(patch[0]) // 4 // step * step, step)
    return replace(plan, tile=(depth, *plan.tile[1:]), accumulate_on_device=False, within_budget=False)
