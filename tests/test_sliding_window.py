"""Sliding window: exact oracles with identity/affine "networks", and nnU-Net's own helpers as reference."""
import numpy as np
import pytest
import torch

from inference.engine.sliding_window import Placement, compute_steps, gaussian_importance_map, pad_to_patch, sliding_window_slabs
from tests.reference_sliding_window import predict_sliding_window


def identity_network(num_classes):
    def network(batch):  # (1, 1, Z, Y, X) -> (1, K, Z, Y, X): channel k = input * (k + 1)
        return torch.cat([batch * (k + 1) for k in range(num_classes)], dim=1)
    return network


@pytest.mark.parametrize("shape,patch,step", [
    ((20, 33, 40), (8, 16, 16), 0.5),
    ((8, 16, 16), (8, 16, 16), 0.5),
    ((17, 17, 17), (8, 8, 8), 0.7),
    ((9, 30, 31), (9, 12, 10), 1.0),
])
def test_identity_network_returns_the_input_exactly(shape, patch, step):
    volume = torch.from_numpy(np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32))
    logits = predict_sliding_window(identity_network(2), volume, patch, 2, step_size=step)
    assert logits.shape == (2, *shape)
    torch.testing.assert_close(logits[0], volume[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1], 2 * volume[0], rtol=1e-5, atol=1e-5)


def test_affine_network_with_position_dependent_output():
    """A network whose output depends on the absolute position proves tiles are placed where they were cut."""
    shape, patch = (12, 20, 18), (6, 8, 8)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    coordinate = torch.from_numpy((z * 1000 + y * 30 + x).astype(np.float32))[None]
    logits = predict_sliding_window(lambda b: 2 * b + 1, coordinate, patch, 1, step_size=0.5)
    torch.testing.assert_close(logits[0], 2 * coordinate[0] + 1, rtol=1e-6, atol=1e-3)


def test_volume_smaller_than_patch_is_padded_and_cropped_back():
    volume = torch.arange(3 * 5 * 7, dtype=torch.float32).reshape(1, 3, 5, 7)
    logits = predict_sliding_window(lambda b: b + 1, volume, (8, 8, 8), 1)
    assert logits.shape == (1, 3, 5, 7)
    torch.testing.assert_close(logits[0], volume[0] + 1)
    padded, unpad = pad_to_patch(volume, (8, 8, 8))
    assert padded.shape == (1, 8, 8, 8)
    assert torch.equal(padded[(slice(None), *unpad)], volume)


def test_network_sees_only_patch_sized_inputs_and_every_voxel_is_covered():
    seen = []

    def network(batch):
        seen.append(tuple(batch.shape[2:]))
        return torch.ones_like(batch)

    logits = predict_sliding_window(network, torch.zeros(1, 30, 50, 45), (10, 20, 20), 1, step_size=0.5)
    assert set(seen) == {(10, 20, 20)}
    assert torch.allclose(logits, torch.ones_like(logits))


@pytest.mark.parametrize("image,patch,step", [((110,), (64,), 0.5), ((300, 256, 256), (64, 128, 128), 0.5),
                                              ((64, 128, 129), (64, 128, 128), 0.5), ((97, 33, 200), (40, 33, 64), 0.8)])
def test_steps_match_nnunet(image, patch, step):
    nnunet = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    assert compute_steps(image, patch, step) == nnunet.compute_steps_for_sliding_window(image, patch, step)


def test_gaussian_matches_nnunet():
    nnunet = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    ours = gaussian_importance_map((16, 24, 20))
    theirs = nnunet.compute_gaussian((16, 24, 20), sigma_scale=1 / 8, value_scaling_factor=10,
                                     dtype=torch.float32, device=torch.device("cpu"))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert float(ours.min()) > 0


def test_bad_step_size_is_rejected():
    with pytest.raises(ValueError, match="step_size"):
        compute_steps((10,), (5,), 0)


def test_bf16_autocast_runs_on_cpu_and_stays_close():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
    volume = torch.randn(1, 12, 16, 16)
    full = predict_sliding_window(conv, volume, (8, 8, 8), 3, precision="fp32")
    half = predict_sliding_window(conv, volume, (8, 8, 8), 3, precision="bf16")
    assert half.dtype == torch.float32
    assert float((full - half).abs().max()) < 0.1


# --------------------------------------------------------------------- z-slab streaming

def _concatenated_slabs(network, volume, patch, classes, **kwargs):
    slabs, expected_z0 = [], 0
    for z0, slab in sliding_window_slabs(network, volume, patch, classes, **kwargs):
        assert z0 == expected_z0 and 0 < slab.shape[1] <= patch[0]  # in order, never deeper than a patch
        expected_z0 += slab.shape[1]
        slabs.append(slab.clone())
    return torch.cat(slabs, dim=1)


@pytest.mark.parametrize("shape,patch,step", [
    ((20, 33, 40), (8, 16, 16), 0.5),
    ((5, 9, 9), (8, 8, 8), 0.5),       # padded in every axis: one slab, cropped back
    ((17, 17, 17), (8, 8, 8), 0.7),
    ((9, 30, 31), (9, 12, 10), 1.0),   # one tile deep
    ((33, 20, 20), (6, 8, 8), 0.3),    # many overlapping tiles along z
])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_slabs_equal_the_whole_map_bit_for_bit(shape, patch, step, precision):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1)
    volume = torch.randn(1, *shape)
    whole = predict_sliding_window(conv, volume, patch, 3, step_size=step, precision=precision)
    slabs = _concatenated_slabs(conv, volume, patch, 3, step_size=step, precision=precision)
    assert torch.equal(slabs, whole)


def test_slabs_accumulated_on_another_device_are_equal():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1)
    volume = torch.randn(1, 40, 20, 24)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    whole = predict_sliding_window(conv.to(device), volume.to(device), (16, 12, 12), 3)
    parts = list(sliding_window_slabs(conv.to(device), volume.to(device), (16, 12, 12), 3,
                                      placement=Placement(accumulate_on_device=False)))
    assert all(slab.device.type == "cpu" for _, slab in parts)
    torch.testing.assert_close(torch.cat([slab for _, slab in parts], dim=1), whole.cpu(), rtol=0, atol=0)


def test_autocast_does_not_leak_into_the_consumer():
    """The generator is suspended between slabs: the caller's export must run in plain fp32."""
    seen = []
    for _ in sliding_window_slabs(lambda b: b, torch.randn(1, 24, 8, 8), (8, 8, 8), 1, precision="bf16"):
        seen.append(torch.is_autocast_enabled("cpu"))
    assert seen and not any(seen)


@pytest.mark.parametrize("patch", [(96, 160, 160), (56, 112, 176), (9, 12, 10), (3, 5, 7), (1, 4, 4)])
def test_gaussian_equals_scipys_filter_of_an_impulse_bit_for_bit(patch):
    """nnU-Net's construction, which the engine reproduces without importing scipy.ndimage."""
    from scipy.ndimage import gaussian_filter
    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    expected = gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
    expected /= expected.max() / 10
    expected[expected == 0] = expected[expected != 0].min()
    assert np.array_equal(gaussian_importance_map(patch).numpy(), expected.astype(np.float32))
