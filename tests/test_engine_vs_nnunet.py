"""Differential test: our engine against nnU-Net v2's own predictor on the same model folder.

At the model's spacing nothing is resampled, so every step (crop, normalisation, tiles, Gaussian,
export) must agree with nnU-Net's, and the labels must be the same voxel for voxel up to float
summation order.
"""
import numpy as np
import pytest
import torch

from inference.engine.runner import EngineOptions, ModelRunner
from inference.engine.model import load_model
from tests.factories import make_model_folder

nnunet_predict = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")


def synthetic_ct(shape, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = sum(g ** 2 for g in grid) < 0.8
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
    image[(grid[0] - 0.2) ** 2 + (grid[1] + 0.3) ** 2 + grid[2] ** 2 < 0.1] = 150  # a bright "organ"
    return image.astype(np.float32)


def nnunet_labels(folder, image, spacing, step):
    predictor = nnunet_predict.nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=False,
                                               perform_everything_on_device=False, device=torch.device("cpu"),
                                               verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=("all",))
    return predictor.predict_single_npy_array(image[None], {"spacing": list(spacing)}, None, None, False)


@pytest.mark.parametrize("shape,step", [((24, 50, 45), 0.5), ((12, 20, 20), 0.5)])
def test_labels_equal_nnunet_predictor_at_model_spacing(tmp_path, shape, step):
    folder = make_model_folder(tmp_path / "model", labels={"background": 0, "a": 1, "b": 2, "c": 3}, bias_class=0)
    spacing = (2.5, 1.6, 1.6)
    image = synthetic_ct(shape)
    theirs = nnunet_labels(folder, image, spacing, step)
    runner = ModelRunner(load_model(folder), EngineOptions(step_size=step))
    ours = runner.segment(image, spacing, {})
    assert ours.shape == theirs.shape == shape
    assert len(np.unique(theirs)) > 1  # the comparison is not trivially all-background
    assert (ours == theirs).mean() > 0.999


def test_labels_close_to_nnunet_when_input_is_resampled(tmp_path):
    """With in-plane resampling the input interpolation differs (ours: area; nnU-Net: cubic spline);
    the outputs still agree on nearly every voxel."""
    folder = make_model_folder(tmp_path / "model", labels={"background": 0, "a": 1, "b": 2}, bias_class=0)
    image = synthetic_ct((16, 64, 60), seed=1)
    spacing = (2.5, 0.8, 0.8)
    theirs = nnunet_labels(folder, image, spacing, 0.5)
    ours = ModelRunner(load_model(folder), EngineOptions()).segment(image, spacing, {})
    assert ours.shape == theirs.shape
    assert (ours == theirs).mean() > 0.9


# model spacing 2.5 x 1.6 x 1.6 mm: separate z with z kept, one 3D spline, separate z with z resized
# both ways (nearest neighbour along z for the input and for the logits), and scans coarser than the
# model on every axis or on some (one 3D spline; the logits shrink back by linear interpolation)
@pytest.mark.parametrize("spacing", [(2.5, 0.8, 0.8), (1.0, 0.9, 0.9), (2.0, 0.6, 0.6), (3.0, 3.0, 3.0),
                                     (4.0, 1.0, 2.4)])
def test_labels_equal_nnunet_with_its_own_resampling(tmp_path, spacing):
    """resampling="nnunet" resamples the input and the logits as nnU-Net does, so the labels match
    nnU-Net's predictor as closely as at the model's own spacing, where "fast" does not."""
    folder = make_model_folder(tmp_path / "model", labels={"background": 0, "a": 1, "b": 2, "c": 3}, bias_class=0)
    image = synthetic_ct((16, 64, 60), seed=1)
    theirs = nnunet_labels(folder, image, spacing, 0.5)
    model = load_model(folder)
    faithful = ModelRunner(model, EngineOptions(resampling="nnunet")).segment(image, spacing, {})
    fast = ModelRunner(model, EngineOptions()).segment(image, spacing, {})
    assert len(np.unique(theirs)) > 1
    assert (faithful == theirs).mean() > 0.999
    assert (faithful == theirs).mean() > (fast == theirs).mean()
