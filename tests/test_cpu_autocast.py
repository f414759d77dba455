"""bf16 training steps on the CPU: nnU-Net's own train_step and validation_step, driven with a minimal
trainer, must run the network in bf16 and the loss on fp32 logits; fp32 must stay untouched."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from training import cpu_autocast
from training.cpu_autocast import Float32Loss, enable_bf16_training_steps, resolve_precision
from training.presets import DEMO, NetworkPreset

trainer_module = pytest.importorskip("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")


class RecordingLoss(nn.Module):
    """Cross-entropy of the first output that remembers the dtypes it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, output, target):
        self.seen.append([o.dtype for o in output])
        return nn.functional.cross_entropy(output[0], target[0][:, 0].long())


class TwoScaleNet(nn.Module):
    """A conv network with deep-supervision-like list output; records its conv's output dtype."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.dtypes = []

    def forward(self, x):
        y = self.conv(x)
        self.dtypes.append(y.dtype)
        return [y, y[:, :, ::2, ::2, ::2]]


def fake_trainer():
    """What nnUNetTrainer.train_step / validation_step read from `self` (before `initialize`)."""
    network = TwoScaleNet()
    trainer = types.SimpleNamespace(device=torch.device("cpu"), network=network, grad_scaler=None,
                                    optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
                                    enable_deep_supervision=True)
    trainer._build_loss = RecordingLoss
    return trainer


def batch():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(2, 1, 8, 8, 8, generator=generator)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=generator)
    return {"data": data, "target": [target, target[:, :, ::2, ::2, ::2]]}


@pytest.fixture
def restore_trainer_module(monkeypatch):
    # enable_bf16_training_steps rebinds a name of nnU-Net's module; give it back after the test
    monkeypatch.setattr(trainer_module, "dummy_context", trainer_module.dummy_context)


def test_train_step_runs_the_network_in_bf16_and_the_loss_in_fp32(restore_trainer_module):
    trainer = fake_trainer()
    enable_bf16_training_steps(trainer)
    trainer.loss = trainer._build_loss()  # what initialize() does
    before = trainer.network.conv.weight.detach().clone()
    result = trainer_module.nnUNetTrainer.train_step(trainer, batch())
    assert trainer.network.dtypes == [torch.bfloat16]
    assert trainer.loss.loss.seen == [[torch.float32, torch.float32]]
    assert trainer.network.conv.weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(trainer.network.conv.weight, before) and result["loss"] > 0


def test_validation_step_is_autocast_too(restore_trainer_module):
    trainer = fake_trainer()
    enable_bf16_training_steps(trainer)
    trainer.loss = trainer._build_loss()
    trainer.label_manager = types.SimpleNamespace(has_regions=False, has_ignore_label=False)
    trainer.is_ddp = False
    trainer_module.nnUNetTrainer.validation_step(trainer, batch())
    assert trainer.network.dtypes == [torch.bfloat16]
    assert trainer.loss.loss.seen == [[torch.float32, torch.float32]]


def test_without_it_nnunet_trains_in_fp32_on_the_cpu():
    trainer = fake_trainer()
    trainer.loss = trainer._build_loss()
    trainer_module.nnUNetTrainer.train_step(trainer, batch())
    assert trainer.network.dtypes == [torch.float32]


def test_bf16_gradients_follow_fp32_ones():
    """Same step in both precisions: bf16 rounding only (cosine of the weight gradients near 1)."""
    grads = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        network = TwoScaleNet()
        loss_fn = Float32Loss(RecordingLoss())
        data = batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(network(data["data"]), data["target"])
        loss.backward()
        grads[precision] = network.conv.weight.grad.flatten()
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cosine > 0.99


def test_enable_refuses_a_gpu_trainer():
    trainer = types.SimpleNamespace(device=torch.device("cuda"))
    with pytest.raises(ValueError, match="for the CPU"):
        enable_bf16_training_steps(trainer)


def test_precision_resolution(monkeypatch):
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("bf16", "cuda") == resolve_precision("auto", "cuda") == "fp16"  # nnU-Net's own
    assert resolve_precision("bf16", "mps") == "fp32"
    monkeypatch.setattr(cpu_autocast, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(cpu_autocast, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="cpu_precision"):
        resolve_precision("fp16", "cpu")


def test_native_bf16_probe_uses_torchs_cpu_feature_checks(monkeypatch):
    for amx, avx512_bf16, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        assert cpu_autocast.cpu_has_native_bf16() is expected


def test_presets_validate_the_precision():
    # the shipped weights were trained in fp32; bf16 is an override (BENCHMARKS.md, "Training": "bf16 training on the CPU")
    assert {DEMO.organ_first.cpu_precision, DEMO.organ.cpu_precision, DEMO.tumor.cpu_precision} == {"fp32"}
    with pytest.raises(ValueError, match="cpu_precision"):
        NetworkPreset(patch_size=(8, 16, 16), batch_size=1, epochs=1, iterations_per_epoch=1, cpu_precision="half")
