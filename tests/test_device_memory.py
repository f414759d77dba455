"""The device-memory ledger: exact byte counts of known tensors, the forward-pass model against the
tensors a forward pass really allocates, and budgets respected whatever the scan's length or shape."""
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from inference.engine.device_memory import (MB, DeviceLedger, NetworkCost, UNetShape, forward_bytes, plan_tiles, recording,
                                     stride_divisors, weight_bytes)
from inference.engine.runner import EngineOptions, ModelRunner
from inference.engine.model import build_network, load_model
from inference.engine.lean_forward import lean_forward
from inference.engine.sliding_window import Placement, autocast_context, sliding_window_slabs
from tests.factories import make_model_folder
from training.model_folders import architecture, paper_architecture


def test_ledger_counts_holds_transients_and_stage_peaks():
    ledger = DeviceLedger()
    with ledger.stage("organ"):
        weights = ledger.hold(100)
        with ledger.stage("network"):
            ledger.transient(50)
            tile = ledger.hold(7)
        ledger.release(tile)
        with ledger.stage("export"):
            with ledger.holding(20):
                assert ledger.live == 120
        ledger.release(weights)
    with ledger.stage("tumor"):
        ledger.transient(30)
    assert ledger.live == 0 and ledger.peak == 150
    assert ledger.stages == {"organ": 150, "organ/network": 150, "organ/export": 120, "tumor": 30}


class AllocationTracker(TorchDispatchMode):
    """Live bytes of every tensor an op creates (not views, not in-place results), freed when the
    tensor is: the exact allocation sequence of a forward pass, on the meta device (no compute)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(result.alias_info is not None for result in func._schema.returns):
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor):
                    nbytes = tensor.untyped_storage().nbytes()
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(tensor, self._free, nbytes)
        return out

    def _free(self, nbytes):
        self.live -= nbytes


@pytest.mark.parametrize("arch,tile", [
    (paper_architecture((96, 160, 160), (2.5, 1.6, 1.6)), (32, 64, 64)),
    (paper_architecture((56, 112, 176), (2.5, 0.8, 0.8), features=(32, 64, 128, 256, 320)), (56, 112, 176)),
    (architecture((4, 8, 16), ((1, 1, 1), (1, 2, 2), (2, 2, 2))), (8, 20, 24)),
])
@pytest.mark.parametrize("lean", [False, True])
def test_forward_model_equals_the_tensors_a_forward_pass_allocates(arch, tile, lean):
    """The analytic activation model (without cuDNN's workspace) against a tracked forward pass
    of the same network in fp16 on the meta device, the architecture's own forward and
    `lean_forward`: equal to the byte."""
    with torch.device("meta"):
        network = build_network(arch, 1, 14).half().eval()
    batch = torch.zeros((1, 1, *tile), device="meta", dtype=torch.float16)
    tracker = AllocationTracker()
    with torch.inference_mode(), tracker:
        output = lean_forward(network, batch) if lean else network(batch)
        del output
    assert forward_bytes(UNetShape.of(network), tile, 2, workspace_maps=0, lean=lean) == tracker.peak


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lean_forward_gives_the_networks_logits_bit_for_bit(precision):
    torch.manual_seed(0)
    network = build_network(architecture((4, 8, 16), ((1, 1, 1), (1, 2, 2), (2, 2, 2))), 1, 5).eval()
    batch = torch.randn(1, 1, 8, 20, 24)
    with torch.inference_mode(), autocast_context(torch.device("cpu"), precision):
        assert torch.equal(lean_forward(network, batch), network(batch))


def test_sliding_window_reports_its_device_buffers_to_the_byte():
    classes, patch, shape = 3, (8, 16, 16), (20, 33, 40)
    forward = 10 * MB  # larger than the outputs: the tile's peak is the forward pass

    def network(batch):
        return batch.expand(-1, classes, -1, -1, -1).clone()
    with recording() as ledger:
        list(sliding_window_slabs(network, torch.zeros(1, *shape), patch, classes,
                                  placement=Placement(forward_bytes=forward, element_bytes=4)))
    accumulator = 4 * (classes * patch[0] * shape[1] * shape[2] + patch[0] * shape[1] * shape[2] + np.prod(patch))
    assert ledger.peak == accumulator + 4 * np.prod(patch) + forward
    assert ledger.live == 0  # released when the generator finishes


def _paper_cost():
    with torch.device("meta"):
        network = build_network(paper_architecture((96, 160, 160), (2.5, 1.6, 1.6)), 1, 14)
    return NetworkCost(UNetShape.of(network), weight_bytes(network), sum(p.numel() for p in network.parameters()))


@pytest.mark.parametrize("shape", [(20, 256, 256), (300, 256, 256), (1000, 256, 256), (7, 513, 311),
                                   (333, 97, 450), (1500, 640, 640)])
def test_plans_fit_the_budget_whatever_the_scan(shape):
    cost = _paper_cost()
    plan = plan_tiles(cost, (96, 160, 160), 14, shape, "fp16", 1200, stride_divisors(cost.unet))
    assert plan.within_budget and plan.predicted_bytes <= 1200 * MB
    assert all(t % d == 0 for t, d in zip(plan.tile, stride_divisors(cost.unet)))
    long = plan_tiles(cost, (96, 160, 160), 14, (shape[0] * 10, *shape[1:]), "fp16", 1200, stride_divisors(cost.unet))
    assert long == plan  # the scan's length changes nothing on the device


def test_the_default_budget_keeps_the_paper_organ_patch_with_logits_in_host_ram():
    """The lean forward pass lets the trained patch fit; the accumulator moves, the tiles do not."""
    cost = _paper_cost()
    plan = plan_tiles(cost, (96, 160, 160), 14, (300, 256, 256), "fp16", 1200, stride_divisors(cost.unet))
    assert plan.tile == (96, 160, 160) and not plan.accumulate_on_device


def test_without_a_budget_the_trained_patch_runs_on_the_device():
    cost = _paper_cost()
    plan = plan_tiles(cost, (96, 160, 160), 14, (300, 256, 256), "fp16", None)
    assert plan.tile == (96, 160, 160) and plan.accumulate_on_device


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    arch = architecture((8, 16, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2)))
    return make_model_folder(tmp_path_factory.mktemp("model") / "organ", patch=(32, 32, 32), arch=arch,
                             labels={"background": 0, "a": 1, "b": 2}, bias_class=0)


@pytest.mark.parametrize("shape", [(12, 40, 44), (150, 40, 44), (37, 61, 23)])
def test_cpu_twin_keeps_the_budget_on_short_long_and_odd_scans(small_model, shape):
    """The engine following the GPU's plan on the CPU: the ledger's peak stays within the budget
    (which the trained patch would exceed), for a short, a long and an odd-shaped scan."""
    model = load_model(small_model)
    unbounded = ModelRunner(model, EngineOptions(precision="fp16")).memory_plan((200, 40, 44))
    budget_mb = 0.8 * unbounded.predicted_bytes / MB
    runner = ModelRunner(load_model(small_model), EngineOptions(precision="fp16", gpu_memory_budget_mb=budget_mb))
    image = np.random.default_rng(0).normal(0, 200, shape).astype(np.float32)
    with recording() as ledger:
        labels = runner.segment(image, (2.5, 1.6, 1.6), {})
    assert labels.shape == shape
    assert 0 < ledger.peak <= budget_mb * MB
    assert ledger.stages["organ"] == ledger.peak and "organ/network" in ledger.stages
    assert ledger.events  # a smaller tile or host accumulation, said in the report


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_keeps_to_its_ledger_and_agrees_with_its_cpu_twin(small_model):
    """On a GPU: torch's allocated peak of the budgeted path stays within the ledger's prediction
    (plus cuDNN's workspace, which the ledger's activation model already holds for U-Nets), and
    the labels equal the CPU twin's (the same plan on the CPU) on >= 99.9 % of voxels."""
    image = np.random.default_rng(0).normal(0, 200, (70, 40, 44)).astype(np.float32)
    cpu = ModelRunner(load_model(small_model), EngineOptions(precision="fp32", gpu_memory_budget_mb=20))
    gpu = ModelRunner(load_model(small_model), EngineOptions(device=torch.device("cuda"), precision="fp16",
                                                             gpu_memory_budget_mb=20))
    twin = cpu.segment(image, (2.5, 1.6, 1.6), {})
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    with recording() as ledger:
        labels = gpu.segment(image, (2.5, 1.6, 1.6), {})
    assert torch.cuda.max_memory_allocated() - baseline <= 1.1 * ledger.peak + MB
    assert (labels == twin).mean() >= 0.999


def test_lean_model_averages_folds_like_the_loaded_model(tmp_path):
    from inference.engine.lean_forward import LeanModel
    folder = make_model_folder(tmp_path / "two_folds", folds=("0", "1"), labels={"background": 0, "a": 1})
    model = load_model(folder)
    batch = torch.randn(1, 1, 16, 32, 32)
    with torch.inference_mode():
        assert torch.equal(LeanModel(model)(batch), model(batch))
    assert LeanModel(model).config is model.config
