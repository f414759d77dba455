"""`--tta`: nnU-Net's test-time mirroring as a wrapper around the network callable."""
import numpy as np
import pytest
import torch

from inference.engine.runner import EngineOptions, ModelRunner
from inference.engine.mirroring import MirroredNetwork, mirror_combinations
from inference.engine.model import load_model
from tests.factories import make_model_folder


class Ramp(torch.nn.Module):
    """Not flip-equivariant: each class channel is the input times a ramp along one axis."""

    def forward(self, x):
        z, y, x_ = (torch.arange(n, dtype=torch.float32) for n in x.shape[2:])
        ramps = [z[:, None, None], y[None, :, None], x_[None, None, :]]
        return torch.cat([x * ramp for ramp in ramps], dim=1)


def test_combinations_are_nnunets_order():
    assert mirror_combinations((0, 1, 2)) == [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert mirror_combinations(()) == []


def test_average_of_flipped_predictions_by_hand():
    batch = torch.rand(1, 1, 4, 5, 6)
    network = Ramp()
    expected = (network(batch) + torch.flip(network(torch.flip(batch, (2,))), (2,))) / 2
    torch.testing.assert_close(MirroredNetwork(network, (0,))(batch), expected)


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 2), (0,)])
def test_equals_nnunets_internal_maybe_mirror_and_predict(axes):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(use_mirroring=True, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.network, predictor.allowed_mirroring_axes = Ramp(), axes
    batch = torch.rand(1, 1, 4, 5, 6)
    torch.testing.assert_close(MirroredNetwork(Ramp(), axes)(batch),
                               predictor._internal_maybe_mirror_and_predict(batch))


def test_no_allowed_axes_is_the_network_itself():
    batch = torch.rand(1, 1, 4, 5, 6)
    assert torch.equal(MirroredNetwork(Ramp(), None)(batch), Ramp()(batch))


def test_engine_with_tta_runs_every_mirrored_pass_of_a_real_model(tmp_path):
    folder = make_model_folder(tmp_path / "m", labels={"background": 0, "liver": 1}, bias_class=0)
    volume = np.random.default_rng(0).normal(0, 300, (20, 40, 40)).astype(np.float32)
    plain = ModelRunner(load_model(folder), EngineOptions()).segment(volume, (2.5, 1.6, 1.6), {})
    runner = ModelRunner(load_model(folder), EngineOptions(tta=True))
    assert isinstance(runner.model, MirroredNetwork)
    calls, network = [], runner.model.network  # count the passes of whatever runs the network
    runner.model.network = lambda x: calls.append(tuple(x.shape)) or network(x)
    mirrored = runner.segment(volume, (2.5, 1.6, 1.6), {})
    tiles = len(calls) // 8
    assert len(calls) == 8 * tiles and tiles >= 1  # checkpoint allows (0, 1, 2): 8 passes per tile
    assert mirrored.shape == plain.shape == volume.shape and mirrored.dtype == np.uint8
