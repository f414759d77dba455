"""Device-memory ledger: the bytes the GPU path keeps on the device, counted on any machine.

The engine reports every buffer it places on the compute device (network weights, input tiles,
the sliding window's accumulator, the export's rows and working set) to the ledger active for
the case (`recording`), and the network forward pass as the analytic activation peak of its
architecture (`forward_bytes`). The same placement decisions run on a CPU (`MemoryPlan` with a
budget: the "CPU twin" of the CUDA path), so a machine without a GPU predicts what one would hold,
stage by stage; on CUDA the prediction stands beside the measured peak in the run report.

Forward activations of an nnU-Net `PlainConvUNet` in inference mode (derived from its forward;
C_s channels and V_s voxels of stage s, b bytes per element): the encoder keeps every stage's
output as a skip; decoder stage s holds all skips, its low-resolution input (C_{s+1} V_{s+1}),
the concatenation (2 C_s V_s) and, inside its second convolution, the previous block's output, the
convolution's output and the norm's output (3 C_s V_s). At full resolution that is
5 C_0 V_0 + sum_s C_s V_s + C_1 V_1 elements: 421 bytes a voxel for the paper's organ network in
fp16. The measured H200 peaks (1203/802/604/401/770 MB at 96x160x160 .. 96x128x128: 490 bytes a
voxel at every tile size) exceed it by about one more full-resolution map (64 bytes a voxel):
cuDNN's convolution workspace, which the ledger adds (`CONV_WORKSPACE_MAPS`).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

MB = 2**20
# Calibration against one NVIDIA H200 (torch 2.x, CUDA 12): NVML's figure of an idle device with
# our process's CUDA context, and cuDNN's workspace of the largest convolution in feature maps.
CUDA_CONTEXT_MB = 618.0
CONV_WORKSPACE_MAPS = 1.5
# What the whole device showed beyond context + torch's allocated peak on a 300-slice case
# (3800 - 618 - 2166 MB: cuBLAS/cuDNN handles and kernels, the caching allocator's rounding).
DEVICE_OVERHEAD_MB = 1016.0
DEFAULT_BUDGET_MB = 1200.0  # tensors on the device; with the above about 2.8 GB whole-device
DEVICE_EXPORT_BYTES = 64 * MB  # export working set on the device (the CPU's is larger)


def tensor_bytes(shape: Sequence[int], element_bytes: int) -> int:
    return int(math.prod(int(s) for s in shape)) * int(element_bytes)


# ------------------------------------------------------------------------------ the ledger

@dataclass
class DeviceLedger:
    """Live bytes on the device, the peak overall and per stage (nested stages: "organ/network").

    `hold` counts a buffer until its token is released; `transient` counts a buffer that exists
    only for a moment on top of what is live (a forward pass's activations)."""
    live: int = 0
    peak: int = 0
    stages: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)  # fallbacks taken, for the run report
    _path: list[str] = field(default_factory=list)
    _held: dict[int, int] = field(default_factory=dict)
    _next: int = 0

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._path.append(name)
        self._note()
        try:
            yield
        finally:
            self._path.pop()

    def hold(self, nbytes: int) -> int:
        self._next += 1
        self._held[self._next] = int(nbytes)
        self.live += int(nbytes)
        self._note()
        return self._next

    def release(self, token: int | None) -> None:
        if token is not None and token in self._held:
            self.live -= self._held.pop(token)

    def transient(self, nbytes: int) -> None:
        self.live += int(nbytes)
        self._note()
        self.live -= int(nbytes)

    @contextlib.contextmanager
    def holding(self, nbytes: int) -> Iterator[None]:
        token = self.hold(nbytes)
        try:
            yield
        finally:
            self.release(token)

    def _note(self) -> None:
        self.peak = max(self.peak, self.live)
        for depth in range(1, len(self._path) + 1):
            key = "/".join(self._path[:depth])
            self.stages[key] = max(self.stages.get(key, 0), self.live)

    def as_dict(self) -> dict:
        return {"predicted_peak_mb": round(self.peak / MB, 1),
                "stages_mb": {k: round(v / MB, 1) for k, v in self.stages.items()},
                "fallbacks": list(self.events)}


_ACTIVE: contextvars.ContextVar[DeviceLedger | None] = contextvars.ContextVar("device_ledger", default=None)


@contextlib.contextmanager
def recording() -> Iterator[DeviceLedger]:
    """A fresh ledger that the engine's device buffers report to while the block runs."""
    ledger = DeviceLedger()
    token = _ACTIVE.set(ledger)
    try:
        yield ledger
    finally:
        _ACTIVE.reset(token)


def active_ledger() -> DeviceLedger:
    """The ledger of the running case, or a throw-away one outside `recording`."""
    return _ACTIVE.get() or DeviceLedger()


# ---------------------------------------------------------------- forward activation model

@dataclass(frozen=True)
class UNetShape:
    """What the activation model needs from a U-Net: channels and strides per encoder stage,
    convolutions per decoder stage, classes."""
    channels: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    decoder_convs: tuple[int, ...]  # per decoder stage, deepest first
    classes: int
    lean: bool = False  # runs `lean_forward.lean_forward` (feature maps dropped as soon as read)

    @classmethod
    def of(cls, network) -> "UNetShape | None":
        """From a dynamic-network-architectures U-Net (None for anything else)."""
        encoder, decoder = getattr(network, "encoder", None), getattr(network, "decoder", None)
        if encoder is None or decoder is None or not hasattr(encoder, "output_channels"):
            return None
        from inference.engine.lean_forward import is_lean
        convs = tuple(len(getattr(stage, "convs", stage)) for stage in decoder.stages)
        return cls(tuple(int(c) for c in encoder.output_channels),
                   tuple(tuple(int(s) for s in stride) for stride in encoder.strides), convs,
                   int(decoder.seg_layers[-1].out_channels), is_lean(network))


def forward_bytes(unet: UNetShape, tile: Sequence[int], element_bytes: int = 2,
                  workspace_maps: float = CONV_WORKSPACE_MAPS, lean: bool | None = None) -> int:
    """Peak bytes of one inference forward pass above its input (module docstring); `lean`
    (default: the network's own) counts `lean_forward` instead of the architecture's forward."""
    voxels, size = [], np.asarray(tile, dtype=np.int64)
    for stride in unet.strides:
        size = size // np.asarray(stride)
        voxels.append(int(np.prod(size)))
    maps = [c * v for c, v in zip(unet.channels, voxels)]  # elements of each stage's output
    lean = unet.lean if lean is None else lean
    peak = _lean_peak(maps) if lean else _plain_peak(maps, unet.decoder_convs)
    peak = max(peak, maps[0] + unet.classes * voxels[0] + (0 if lean else sum(maps)))  # segmentation layer
    return int((peak + workspace_maps * max(maps)) * element_bytes)


def _plain_peak(maps: list[int], decoder_convs) -> int:
    """dynamic-network-architectures' forward: every skip held to the end, block inputs held."""
    peak = max(sum(maps[:s]) + 3 * maps[s] for s in range(len(maps)))  # skips so far + block in/conv/norm
    for depth, convs in enumerate(decoder_convs):  # deepest decoder stage first
        s = len(maps) - 2 - depth
        working = 2 * maps[s] + (3 if convs > 1 else 2) * maps[s]  # concatenation + inside a block
        peak = max(peak, sum(maps) + maps[s + 1] + working)
    return peak


def _lean_peak(maps: list[int]) -> int:
    """`lean_forward`: a skip leaves with its concatenation, a block's input with its first op."""
    peak = max(sum(maps[:s]) + 2 * maps[s] for s in range(len(maps)))  # encoder: conv + norm outputs
    for s in range(len(maps) - 2, -1, -1):
        upsampling = sum(maps[:s + 1]) + maps[s + 1] + maps[s]  # waiting skips, lower input, upsampled
        joining = sum(maps[:s]) + 4 * maps[s]  # skip + upsampled + their concatenation
        peak = max(peak, upsampling, joining)
    return peak


def weight_bytes(network) -> int:
    return sum(p.numel() * p.element_size() for p in network.parameters()) + \
        sum(b.numel() * b.element_size() for b in network.buffers())


def precision_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


# ------------------------------------------------------------------------------ the plan

@dataclass(frozen=True)
class MemoryPlan:
    """Where one model's sliding window keeps its buffers and how big its tiles are."""
    tile: tuple[int, ...]
    accumulate_on_device: bool
    export_bytes: int
    predicted_bytes: int
    within_budget: bool

    def describe(self, patch: Sequence[int]) -> list[str]:
        notes = []
        if tuple(self.tile) != tuple(patch):
            notes.append(f"tiles {'x'.join(map(str, self.tile))} instead of the trained patch "
                         f"{'x'.join(map(str, patch))}")
        if not self.accumulate_on_device:
            notes.append("logits accumulate in host RAM")
        if not self.within_budget:
            notes.append(f"budget not met: {self.predicted_bytes / MB:.0f} MB predicted")
        return notes


@dataclass(frozen=True)
class NetworkCost:
    """What the plan needs to know of a network: its activation model and resident bytes."""
    unet: UNetShape | None
    weights: int  # fp32 parameters and buffers on the device
    parameters: int  # elements: autocast keeps a half-precision copy while a tile runs

    def forward(self, tile, element_bytes: int) -> int:
        if self.unet is None:  # an architecture without a model: 1 kB a voxel, conservatively
            return 1024 * int(math.prod(tile))
        return forward_bytes(self.unet, tile, element_bytes)


def tile_bytes(cost: NetworkCost, tile, classes: int, plane, element_bytes: int, accumulate_on_device: bool,
               export_bytes: int) -> int:
    """Peak device bytes of the sliding window and the export with this tile (`plane`: the padded
    (Y, X) of the network input). The model's weights stay resident; autocast's copy lives while a
    tile runs."""
    voxels = int(math.prod(tile))
    cast = cost.parameters * element_bytes if element_bytes < 4 else 0
    after = classes * voxels * (element_bytes + (8 if accumulate_on_device else 0))  # + float, * gaussian
    per_tile = 4 * voxels + cast + max(cost.forward(tile, element_bytes), after)
    if not accumulate_on_device:
        return cost.weights + per_tile
    rows = tile[0] * plane[0] * plane[1]
    accumulator = 4 * (classes + 1) * rows + 4 * voxels  # logits, weights, gaussian
    # export: a finished slab (the last one is a whole tile deep), the rows it joins and their
    # concatenation, and the interpolation's working set
    slab = 4 * classes * rows
    return cost.weights + accumulator + max(per_tile, 3 * slab + export_bytes)


def plan_tiles(cost: NetworkCost, patch, classes: int, shape, precision: str, budget_mb: float | None,
               divisors: Sequence[int] | None = None) -> MemoryPlan:
    """The largest tile (the trained patch, then shallower along z in steps the network can take,
    then smaller in-plane, never under half the patch) whose predicted device bytes fit
    `budget_mb`, accumulating on the device if it fits there, else in host RAM: a smaller tile
    changes the labels (instance normalisation sees other statistics: BENCHMARKS.md), host
    accumulation does not. Without a budget the trained patch on the device (the path before budgets)."""
    element = precision_bytes(precision)
    patch = tuple(int(p) for p in patch)
    plane = tuple(max(int(s), int(p)) for s, p in zip(shape[1:], patch[1:]))
    if budget_mb is None:
        total = tile_bytes(cost, patch, classes, plane, element, True, DEVICE_EXPORT_BYTES)
        return MemoryPlan(patch, True, DEVICE_EXPORT_BYTES, total, True)
    divisors = tuple(divisors or (1, 1, 1))
    candidates = _tile_candidates(patch, divisors)
    budget = budget_mb * MB
    for tile in candidates:  # the tile decides the labels, the accumulator's place only the time
        for on_device in (True, False):
            total = tile_bytes(cost, tile, classes, plane, element, on_device, DEVICE_EXPORT_BYTES)
            if total <= budget:
                return MemoryPlan(tile, on_device, DEVICE_EXPORT_BYTES, total, True)
    tile = candidates[-1]
    return MemoryPlan(tile, False, DEVICE_EXPORT_BYTES,
                      tile_bytes(cost, tile, classes, plane, element, False, DEVICE_EXPORT_BYTES), False)


def _tile_candidates(patch, divisors) -> list[tuple[int, ...]]:
    """Trained patch first; z shrinks first (in-plane context matters more to CT organs), then
    the plane, each in multiples of what the network's strides divide, down to half the patch."""
    def sizes(length: int, divisor: int) -> list[int]:
        step = max(divisor, 1)
        return [n for n in range(length, max(length // 2, step) - 1, -step) if n % step == 0] or [length]
    depths = sizes(patch[0], divisors[0])
    planes = list(zip(sizes(patch[1], divisors[1]), sizes(patch[2], divisors[2])))
    return [(d, *patch[1:]) for d in depths] + [(depths[-1], y, x) for y, x in planes[1:]]


def stride_divisors(unet: UNetShape | None) -> tuple[int, int, int]:
    """Per axis the product of the network's strides: tile sizes it can take without padding."""
    if unet is None:
        return (1, 1, 1)
    return tuple(int(np.prod([s[a] for s in unet.strides])) for a in range(3))


def predicted_device_mb(tensor_peak_bytes: int) -> float:
    """Whole-device figure NVML would show: tensors + CUDA context + libraries' overhead."""
    return tensor_peak_bytes / MB + CUDA_CONTEXT_MB + DEVICE_OVERHEAD_MB
