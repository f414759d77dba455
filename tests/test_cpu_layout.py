"""Channels-last convolutions on the CPU: the same logits as the default layout, back in the default layout."""
import copy

import numpy as np
import torch

from inference.engine.cpu_layout import LAYOUT, ChannelsLastOnCpu
from inference.engine.lean_forward import LeanModel
from inference.engine.model import load_model
from inference.engine.runner import EngineOptions, ModelRunner
from tests.factories import make_model_folder


def test_channels_last_logits_equal_default_layout(tmp_path):
    folder = make_model_folder(tmp_path / "model", folds=("0", "1"), labels={"background": 0, "a": 1, "b": 2})
    model = load_model(folder)
    plain = LeanModel(copy.deepcopy(model))
    wrapped = ChannelsLastOnCpu(LeanModel(model))
    assert all(p.is_contiguous(memory_format=LAYOUT) for n in model.networks for p in n.parameters() if p.dim() == 5)
    batch = torch.randn(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = wrapped(batch), plain(batch)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-5)
        assert ours.is_contiguous()  # accumulators downstream see the default layout
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, low_plain = wrapped(batch).float(), plain(batch).float()
        assert (low.argmax(1) == low_plain.argmax(1)).float().mean() > 0.99
    assert wrapped.config is model.config and wrapped.networks is model.networks


def test_runner_on_the_cpu_runs_channels_last(tmp_path):
    folder = make_model_folder(tmp_path / "model", labels={"background": 0, "a": 1})
    runner = ModelRunner(load_model(folder), EngineOptions())
    assert isinstance(runner.model, ChannelsLastOnCpu)
