"""bf16 autocast for nnU-Net's training steps on CPUs that compute bf16 natively.

nnU-Net autocasts the forward pass and loss of its train and validation steps (fp16, with a
gradient scaler) on CUDA only; on a CPU it trains in fp32, because there autocast is "slow as heck"
(its comment). That holds for CPUs that emulate bf16, not for those with AMX or AVX512-BF16 units:
there the demo's networks train about twice as fast per iteration in bf16 (`python -m
benchmarks.training_speed --precision bf16`; BENCHMARKS.md, "Training": "bf16 training on the CPU").
bf16 needs no gradient scaler: it has fp32's exponent range.
"""
from __future__ import annotations

import torch
from torch import nn

# one detection for training and inference (`--precision auto`), so both agree on a CPU
from inference.engine.precision import cpu_has_native_bf16
from training.presets import CPU_PRECISIONS


def resolve_precision(cpu_precision: str, device: str) -> str:
    """What a training on `device` computes in. On the CPU "bf16" or "fp32" as `cpu_precision` says
    ("auto": bf16 where the CPU has native bf16 units); on CUDA nnU-Net's own fp16 autocast, whatever
    the preset says; fp32 elsewhere (MPS)."""
    if cpu_precision not in CPU_PRECISIONS:
        raise ValueError(f"cpu_precision must be one of {CPU_PRECISIONS}, got {cpu_precision!r}")
    if device == "cuda":
        return "fp16"
    if device != "cpu" or cpu_precision == "fp32":
        return "fp32"
    if cpu_precision == "bf16":
        return "bf16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


class Float32Loss(nn.Module):
    """`loss` on the network's outputs cast to fp32 (with deep supervision a list of outputs)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, output, target):
        if isinstance(output, (list, tuple)):
            output = type(output)(o.float() for o in output)
        else:
            output = output.float()
        return self.loss(output, target)


def enable_bf16_training_steps(trainer) -> None:
    """Make `trainer` (an nnUNetTrainer on the CPU, before `initialize`) run the forward pass of its
    train and validation steps under bf16 autocast, and their loss on fp32 logits as under nnU-Net's
    CUDA autocast (where softmax is an fp32 op; CPU autocast would leave it, and the Dice sums, in bf16).

    nnU-Net chooses the steps' context as `autocast(...) if cuda else dummy_context()`, `dummy_context`
    being a name in its trainer module; that name is pointed at a bf16 autocast context. The training
    has its own process (`training.nnunet_train`), so nothing else sees the change.
    """
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module

    if trainer.device.type != "cpu":
        raise ValueError(f"bf16 training steps are for the CPU; this trainer runs on {trainer.device}")
    if not callable(getattr(trainer_module, "dummy_context", None)):
        raise RuntimeError("this nnunetv2 has no nnUNetTrainer.dummy_context: cannot autocast its training steps")
    trainer_module.dummy_context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    build_loss = trainer._build_loss
    trainer._build_loss = lambda: Float32Loss(build_loss())
