"""Which precision a network runs in, and why (`--precision auto`, the default).

- CUDA: fp16 autocast, as nnU-Net's predictor does.
- CPU with bf16 units (AMX or AVX512-BF16): bf16 autocast, about 10x faster than fp32 per patch
  on such a CPU (BENCHMARKS.md, "Precision and resampling defaults"), unless the model's
  cascade.json records that its bf16 labels agreed with its fp32 labels below
  `AGREEMENT_FLOOR` on the validation cases: then fp32. A model without that record (a plain
  nnU-Net folder) runs in bf16, as nnU-Net itself runs reduced precision on GPUs.
- CPU without bf16 units (bf16 would be emulated, slower than fp32), or any other device: fp32.

Training (`training.cpu_autocast`) detects bf16 units with the same `cpu_has_native_bf16`.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from inference.core.choices import PRECISIONS

log = logging.getLogger(__name__)

AGREEMENT_FLOOR = 0.99  # recorded bf16-vs-fp32 label agreement (mean Dice) below this: fp32
AGREEMENT_KEY = "precision_agreement"  # cascade.json: {"models": {stage folder: {AGREEMENT_FIELD: ...}}}
AGREEMENT_FIELD = "bf16_vs_fp32_mean_dice"

# torch's own CPU feature probes (private, hence looked up by name; a torch without them: no bf16)
_NATIVE_BF16_PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16)."""
    probes = [getattr(torch.cpu, name, None) for name in _NATIVE_BF16_PROBES]
    return any(probe() for probe in probes if probe is not None)


def nnunet_precision(device: torch.device) -> str:
    """What nnU-Net's predictor computes in: fp16 on CUDA, fp32 elsewhere (training's pseudo
    labels and the recorded validation metrics use it, so they do not depend on the CPU)."""
    return "fp16" if device.type == "cuda" else "fp32"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32, bf16 or fp16: what the network's autocast computes in
    reason: str
    fell_back: bool = False  # fp32 because the model's recorded bf16 agreement is too low

    def as_dict(self) -> dict:
        return {"precision": self.precision, "reason": self.reason}


def resolve_precision(requested: str, device: torch.device, agreement: float | None = None) -> PrecisionChoice:
    """`requested` is "auto" or one of PRECISIONS; `agreement` the model's recorded bf16-vs-fp32
    label agreement (None: no record)."""
    if requested in PRECISIONS:
        return PrecisionChoice(requested, f"--precision {requested} asked for")
    if requested != "auto":
        raise ValueError(f"precision must be auto or one of {PRECISIONS}, got {requested!r}")
    if device.type == "cuda":
        return PrecisionChoice("fp16", "auto on CUDA: fp16 autocast, as nnU-Net's predictor")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"auto on {device.type}: fp32")
    if not cpu_has_native_bf16():
        return PrecisionChoice("fp32", "auto on a CPU without bf16 units (AMX, AVX512-BF16): fp32")
    if agreement is None:
        return PrecisionChoice("bf16", "auto on a CPU with bf16 units: bf16 autocast (no recorded "
                                       "bf16-vs-fp32 agreement for this model)")
    if agreement < AGREEMENT_FLOOR:
        return PrecisionChoice("fp32", f"auto on a CPU with bf16 units, but this model's recorded bf16-vs-fp32 "
                                       f"label agreement {agreement:.4f} is below {AGREEMENT_FLOOR}: fp32", fell_back=True)
    return PrecisionChoice("bf16", f"auto on a CPU with bf16 units: bf16 autocast (recorded bf16-vs-fp32 "
                                   f"label agreement {agreement:.4f} >= {AGREEMENT_FLOOR})")


def recorded_agreement(manifest_raw: dict, folder_name: str) -> float | None:
    """The bf16-vs-fp32 agreement cascade.json records for the stage folder `folder_name`, or None.
    A malformed record raises ValueError (the manifest loader turns it into a fatal error)."""
    records = (manifest_raw.get(AGREEMENT_KEY) or {}).get("models") or {}
    if folder_name not in records:
        return None
    try:
        value = float(records[folder_name][AGREEMENT_FIELD])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{AGREEMENT_KEY}.{folder_name}: no number {AGREEMENT_FIELD} ({error!r})") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{AGREEMENT_KEY}.{folder_name}.{AGREEMENT_FIELD} must lie in [0, 1], got {value}")
    return value


def with_resolved_precision(options, agreement: float | None, model_name: str):
    """(`options` with its precision resolved for one model, the PrecisionChoice); a fallback to
    fp32 because of a low recorded agreement is logged as a warning, naming the model."""
    choice = resolve_precision(options.precision, options.device, agreement)
    if choice.fell_back:
        log.warning("%s: %s", model_name, choice.reason)
    return dataclasses.replace(options, precision=choice.precision), choice
