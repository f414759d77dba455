"""nnU-Net's image resampling, reproduced with scipy (equal to nnU-Net's own function) and on the GPU with CuPy."""
import numpy as np
import pytest

from inference.engine.model import DataResampling, ModelError
from inference.resampling.nnunet import resample_like_nnunet, separate_axis

nnunet_resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")

CASES = [  # (shape, spacing, target spacing): which path nnU-Net takes
    ((20, 64, 64), (2.5, 0.8, 0.8), (3.0, 1.4, 1.4)),  # thick input slices: separate z, z down
    ((12, 40, 40), (5.0, 0.7, 0.7), (2.5, 1.4, 1.4)),  # separate z, z up
    ((20, 64, 64), (1.0, 0.8, 0.8), (3.0, 1.4, 1.4)),  # isotropic enough: one 3D spline
    ((30, 40, 50), (1.0, 1.0, 1.0), (1.5, 0.7, 2.0)),  # 3D, mixed up and down
    ((16, 40, 40), (1.0, 1.0, 1.0), (1.0, 4.0, 4.0)),  # anisotropic target: separate along z
    ((18, 22, 26), (1.2, 0.9, 0.9), (1.2, 0.9, 0.9)),  # nothing to do
    ((40, 36, 14), (0.7, 0.7, 5.0), (1.4, 1.4, 2.5)),  # thick axis last: separate x, x up
]


@pytest.mark.parametrize("shape,spacing,target_spacing", CASES)
@pytest.mark.parametrize("settings", [DataResampling(), DataResampling(order_z=1), DataResampling(order=1),
                                      DataResampling(force_separate_z=True), DataResampling(force_separate_z=False)])
def test_equals_nnunet_resampling_bit_for_bit(shape, spacing, target_spacing, settings):
    image = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    image[:, :3] = -5  # flat regions and edges, like air around a body
    target = [int(round(n * s / t)) for n, s, t in zip(shape, spacing, target_spacing)]
    theirs = nnunet_resampling.resample_data_or_seg_to_shape(
        image[None], target, spacing, target_spacing, is_seg=False, order=settings.order, order_z=settings.order_z,
        force_separate_z=settings.force_separate_z)[0]
    ours = resample_like_nnunet(image, target, spacing, target_spacing, settings.order, settings.order_z,
                                settings.force_separate_z)
    assert ours.dtype == np.float32 and ours.shape == tuple(target)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("spacing,target,force", [
    ((2.5, 0.8, 0.8), (3.0, 1.4, 1.4), None), ((1.0, 1.0, 1.0), (1.0, 4.0, 4.0), None),
    ((1.0, 1.0, 1.0), (2.0, 1.0, 1.0), None), ((5.0, 5.0, 1.0), (1.0, 1.0, 1.0), None),
    ((2.5, 0.8, 0.8), (1.0, 1.0, 1.0), True), ((2.5, 0.8, 0.8), (1.0, 1.0, 1.0), False)])
def test_separate_axis_follows_nnunet(spacing, target, force):
    do_separate, axis = nnunet_resampling.determine_do_sep_z_and_axis(force, spacing, target)
    assert separate_axis(spacing, target, force) == (axis if do_separate else None)


def test_plans_settings_are_validated():
    assert DataResampling.from_plans({"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}) \
        == DataResampling()
    for bad in ({"order": 7}, {"order_z": "0"}, {"force_separate_z": "yes"}):
        with pytest.raises(ModelError, match="plans resampling kwargs"):
            DataResampling.from_plans(bad)


def test_plane_threads_do_not_change_a_value():
    image = np.random.default_rng(5).normal(size=(23, 48, 40)).astype(np.float32)
    target = (17, 30, 26)  # z down by nearest: only the picked planes are resized
    one = resample_like_nnunet(image, target, (2.5, 0.8, 0.8), (3.4, 1.3, 1.25), workers=1)
    many = resample_like_nnunet(image, target, (2.5, 0.8, 0.8), (3.4, 1.3, 1.25), workers=4)
    assert one.dtype == np.float32 and np.array_equal(one, many)


def _cupy_gpu() -> bool:
    try:
        import cupy
        import cupyx.scipy.ndimage  # noqa: F401
        return bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _cupy_gpu(), reason="needs cupy and a CUDA GPU")
@pytest.mark.parametrize("shape,spacing,target_spacing", CASES[:2] + CASES[-1:])
def test_cupy_planes_equal_scipy_planes(shape, spacing, target_spacing):
    """The GPU job of CuPy: nnU-Net's separate-axis spline with every plane resized by cupyx."""
    image = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    target = [int(round(n * s / t)) for n, s, t in zip(shape, spacing, target_spacing)]
    cpu = resample_like_nnunet(image, target, spacing, target_spacing)
    gpu = resample_like_nnunet(image, target, spacing, target_spacing, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-5)


def test_plane_resizer_is_shared_code_with_any_zoom():
    """CPU twin of the CuPy path: `resize_like_skimage` with the zoom handed in (numpy arrays and
    scipy's zoom here, cupy arrays and cupyx's on a GPU) is the function the CPU path runs."""
    from scipy import ndimage

    from inference.resampling.nnunet import resize_like_skimage
    calls = []

    def zoom(*args, **kwargs):
        calls.append(kwargs)
        return ndimage.zoom(*args, **kwargs)
    plane = np.random.default_rng(1).normal(size=(40, 36))
    np.testing.assert_array_equal(resize_like_skimage(plane, (21, 50), 3, zoom=zoom), resize_like_skimage(plane, (21, 50), 3))
    assert calls == [{"order": 3, "mode": "nearest", "grid_mode": True}]
