"""Resampling: torch and cupy backends against the scipy oracle, chunking exactness, exact oracles.

Tolerances: linear vs the float64 scipy oracle 1e-4 abs on N(0, 1) data (torch computes indices
and weights in float32; observed ~1e-6); chunked vs unchunked 1e-6 (observed identical);
nearest is compared exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inference.resampling import fast as resampling
from inference.resampling.fast import (MODES, compute_new_shape, linear_source_weights, nearest_source_indices,
                                  resample_torch, source_range_for_output)
from tests import reference_resampling
from tests.reference_resampling import BACKENDS, resample, resample_cupy, resample_scipy

ORACLE_TOLERANCE = 1e-4
CHUNK_TOLERANCE = 1e-6

# (input shape, output shape (z, y, x)): up, down, mixed per axis, identity, odd, size-1, 3D
CASES = [
    ((2, 4, 5, 6), (7, 9, 11)),  # all grow
    ((2, 9, 10, 12), (4, 5, 6)),  # all shrink, integer and non-integer factors
    ((2, 9, 5, 12), (4, 11, 6)),  # z down, y up, x down: y and x need different operators
    ((1, 4, 12, 12), (10, 7, 7)),  # z up, plane down (the CT 2.5 mm -> 1 mm, 0.8 -> 1.6 mm kind)
    ((3, 5, 6, 7), (5, 6, 7)),  # identity
    ((1, 7, 13, 11), (3, 17, 5)),  # odd sizes
    ((2, 1, 6, 1), (3, 1, 4)),  # size-1 axes grow
    ((1, 5, 1, 7), (1, 1, 1)),  # everything to one voxel
    ((6, 7, 8), (3, 11, 8)),  # 3D input, x unchanged
    ((5, 9, 4), (5, 4, 9)),  # 3D input, z unchanged, y down, x up
]


def _random(shape, seed=0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _has_no_nearest_ties(in_shape, out_shape) -> bool:
    """True where torch's float32 nearest indices equal the oracle's exact ones on every axis."""
    exact = [np.minimum((2 * np.arange(o) + 1) * i // (2 * o), i - 1) for i, o in zip(in_shape, out_shape)]
    return all(np.array_equal(nearest_source_indices(i, o), e) for i, o, e in zip(in_shape, out_shape, exact))


# ------------------------------------------------------------------------------ torch vs oracle

@pytest.mark.parametrize("in_shape,out_shape", CASES)
def test_torch_linear_matches_scipy_oracle(in_shape, out_shape):
    array = _random(in_shape)
    expected = resample_scipy(array, out_shape)
    got = resample_torch(torch.from_numpy(array), out_shape).numpy()
    assert got.shape == expected.shape == array.shape[:-3] + out_shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=ORACLE_TOLERANCE)


@pytest.mark.parametrize("in_shape,out_shape", CASES)
def test_torch_nearest_matches_scipy_oracle(in_shape, out_shape):
    assert _has_no_nearest_ties(in_shape[-3:], out_shape)  # the two differ only at exact ties
    array = _random(in_shape)
    np.testing.assert_array_equal(resample_torch(torch.from_numpy(array), out_shape, mode="nearest").numpy(),
                                  resample_scipy(array, out_shape, mode="nearest"))


@pytest.mark.parametrize("in_shape,out_shape", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_array_module_path_of_cupy_backend_matches_oracle_with_numpy(in_shape, out_shape, mode):
    """The cupy backend's code, run with numpy, so it is checked on machines without a GPU."""
    array = _random(in_shape)
    got = reference_resampling._resample_array_module(np, array, out_shape, mode)
    expected = resample_scipy(array, out_shape, mode=mode)
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=ORACLE_TOLERANCE if mode == "linear" else 0)


def test_nearest_indices_differ_from_exact_maths_only_at_ties_by_one():
    for in_size in range(1, 80):
        for out_size in range(1, 160):
            numerator = (2 * np.arange(out_size) + 1) * in_size
            exact = np.minimum(numerator // (2 * out_size), in_size - 1)
            tie = numerator % (2 * out_size) == 0
            diff = exact - nearest_source_indices(in_size, out_size)
            assert set(np.unique(diff[~tie])) <= {0}
            assert set(np.unique(diff[tie])) <= {0, 1}


# ------------------------------------------------------------------------------------- chunking

@pytest.mark.parametrize("in_shape,out_shape", CASES)
@pytest.mark.parametrize("max_elements", [1, 7, 40, 500])
@pytest.mark.parametrize("mode", MODES)
def test_chunked_equals_unchunked(in_shape, out_shape, max_elements, mode):
    tensor = torch.from_numpy(_random(in_shape, seed=1))
    whole = resample_torch(tensor, out_shape, mode=mode)
    chunked = resample_torch(tensor, out_shape, mode=mode, max_elements=max_elements)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=CHUNK_TOLERANCE)


def test_no_interpolate_call_exceeds_max_elements(monkeypatch):
    """Chunks smaller than a slice: every call reads and writes at most max_elements values."""
    sizes = []
    interpolate_2d = resampling._interpolate_2d  # the one place that calls F.interpolate

    def recording_interpolate_2d(piece, *args, **kwargs):
        result = interpolate_2d(piece, *args, **kwargs)
        sizes.append(max(piece.numel(), result.numel()))
        return result

    monkeypatch.setattr(resampling, "_interpolate_2d", recording_interpolate_2d)
    tensor = torch.from_numpy(_random((2, 9, 12, 10)))
    max_elements = 30  # smaller than one 12x10 slice, larger than any single line
    chunked = resample_torch(tensor, (13, 7, 15), max_elements=max_elements)
    assert sizes and max(sizes) <= max_elements
    monkeypatch.undo()
    torch.testing.assert_close(chunked, resample_torch(tensor, (13, 7, 15)), rtol=0, atol=CHUNK_TOLERANCE)


def test_max_elements_is_capped_to_32_bit_and_validated():
    assert resampling._check_max_elements(2**40) == 2**31 - 1
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_elements"):
            resample_torch(torch.zeros(2, 2, 2), (1, 1, 1), max_elements=bad)


# -------------------------------------------------------------------------------- exact oracles

@pytest.mark.parametrize("in_shape,out_shape", CASES)
@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_constant_volume_stays_constant(in_shape, out_shape, backend):
    array = np.full(in_shape, 3.25, dtype=np.float32)
    for mode in MODES:
        got = resample(array, out_shape, mode=mode, backend=backend)
        np.testing.assert_allclose(got, 3.25, rtol=1e-6)


def test_linear_ramp_along_z_stays_a_ramp_in_the_interior():
    in_z, out_z = 6, 17
    ramp = np.broadcast_to(np.arange(in_z, dtype=np.float32)[:, None, None], (in_z, 3, 4)).copy()
    got = resample_torch(torch.from_numpy(ramp), (out_z, 3, 4)).numpy()
    # Output centre i sits at input coordinate (i + 0.5) * in/out - 0.5; inside [0, in - 1] a
    # linear interpolant of a ramp returns that coordinate itself.
    position = (np.arange(out_z) + 0.5) * in_z / out_z - 0.5
    interior = (position >= 0) & (position <= in_z - 1)
    assert interior.sum() >= out_z - 4
    np.testing.assert_allclose(got[interior], np.broadcast_to(position[interior, None, None], (interior.sum(), 3, 4)),
                               rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got[position < 0], 0)  # clamped at the borders
    np.testing.assert_array_equal(got[position > in_z - 1], in_z - 1)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_integer_factor_area_downsampling_equals_block_means(backend):
    array = _random((2, 8, 6, 9), seed=2)
    blocks = array.reshape(2, 4, 2, 3, 2, 3, 3).mean(axis=(2, 4, 6), dtype=np.float64)
    got = resample(array, (4, 3, 3), backend=backend)
    np.testing.assert_allclose(got, blocks, rtol=0, atol=1e-6)


@pytest.mark.parametrize("out_shape", [(9, 13, 5), (3, 4, 17), (6, 1, 7)])
def test_nearest_on_uint8_labels(out_shape):
    labels = np.random.default_rng(3).choice(np.array([0, 2, 7, 13], dtype=np.uint8), size=(6, 8, 10))
    got = resample_torch(torch.from_numpy(labels), out_shape, mode="nearest")
    assert got.dtype == torch.uint8
    assert set(np.unique(got.numpy())) <= {0, 2, 7, 13}
    reference = F.interpolate(torch.from_numpy(labels).float()[None, None], size=out_shape, mode="nearest-exact")
    torch.testing.assert_close(got, reference[0, 0].to(torch.uint8), rtol=0, atol=0)
    np.testing.assert_array_equal(resample(labels, out_shape, mode="nearest", backend="scipy"), got.numpy())


# ------------------------------------------------------------------------- per-axis index maths

def test_linear_source_weights_reproduce_torch_linear_1d():
    rng = np.random.default_rng(4)
    for in_size in range(1, 40):
        for out_size in range(1, 90):
            x = rng.uniform(-1, 1, in_size).astype(np.float32)
            expected = F.interpolate(torch.from_numpy(x)[None, None], size=out_size, mode="linear",
                                     align_corners=False)[0, 0].numpy()
            lo, hi, frac = linear_source_weights(in_size, out_size)
            assert lo.dtype == hi.dtype == np.int64 and frac.dtype == np.float32
            assert np.all((0 <= lo) & (lo <= hi) & (hi <= in_size - 1) & (hi - lo <= 1))
            rebuilt = x[lo] * (np.float32(1) - frac) + x[hi] * frac
            np.testing.assert_allclose(rebuilt, expected, rtol=0, atol=1e-6)


def test_float64_linear_source_weights_reproduce_torch_linear_1d_in_double():
    rng = np.random.default_rng(10)
    for in_size, out_size in [(10, 23), (5, 16), (7, 7), (3, 100), (1, 9), (23, 10)]:
        x = rng.uniform(-1, 1, in_size)
        expected = F.interpolate(torch.from_numpy(x)[None, None], size=out_size, mode="linear",
                                 align_corners=False)[0, 0].numpy()
        lo, hi, frac = linear_source_weights(in_size, out_size, dtype=np.float64)
        assert frac.dtype == np.float64
        np.testing.assert_allclose(x[lo] * (1 - frac) + x[hi] * frac, expected, rtol=0, atol=1e-12)


def test_nearest_source_indices_reproduce_torch_nearest_exact():
    for in_size in range(1, 60):
        ramp = torch.arange(in_size, dtype=torch.float32)[None, None]
        for out_size in range(1, 130):
            expected = F.interpolate(ramp, size=out_size, mode="nearest-exact")[0, 0].long().numpy()
            np.testing.assert_array_equal(nearest_source_indices(in_size, out_size), expected)


def _resample_1d(x: np.ndarray, out_size: int, mode: str) -> np.ndarray:
    if mode == "area":  # adaptive average pooling at any sizes
        return F.interpolate(torch.from_numpy(x)[None, None], size=out_size, mode="area")[0, 0].numpy()
    return resample_torch(torch.from_numpy(x)[:, None, None], (out_size, 1, 1), mode=mode)[:, 0, 0].numpy()


@pytest.mark.parametrize("mode", ["linear", "area", "nearest"])
def test_source_range_for_output_covers_what_outputs_read(mode):
    rng = np.random.default_rng(5)
    for in_size, out_size in [(7, 19), (19, 7), (12, 12), (5, 13), (13, 5), (1, 4), (4, 1), (10, 25)]:
        x = rng.standard_normal(in_size).astype(np.float32)
        full = _resample_1d(x, out_size, mode)
        for out_start in range(out_size):
            for out_stop in range(out_start + 1, out_size + 1):
                in_start, in_stop = source_range_for_output(in_size, out_size, out_start, out_stop, mode)
                assert 0 <= in_start < in_stop <= in_size
                # never much wider than the window's footprint
                assert in_stop - in_start <= int(np.ceil((out_stop - out_start) * in_size / out_size)) + 2
                perturbed = x.copy()
                perturbed[:in_start] += 100
                perturbed[in_stop:] -= 100
                np.testing.assert_array_equal(_resample_1d(perturbed, out_size, mode)[out_start:out_stop],
                                              full[out_start:out_stop])


def test_source_range_for_output_rejects_bad_arguments():
    assert source_range_for_output(5, 9, 3, 3) == (0, 0)
    with pytest.raises(ValueError, match="linear.*area.*nearest"):
        source_range_for_output(5, 9, 0, 2, "cubic")
    with pytest.raises(ValueError):
        source_range_for_output(5, 9, 4, 10)


# ----------------------------------------------------------------------------------------- errors

def test_bad_backend_names_the_allowed_values():
    with pytest.raises(ValueError) as error:
        resample(np.zeros((2, 2, 2), np.float32), (1, 1, 1), backend="opencv")
    assert all(name in str(error.value) for name in BACKENDS)


@pytest.mark.parametrize("function", [
    lambda mode: resample(np.zeros((2, 2, 2), np.float32), (1, 1, 1), mode=mode),
    lambda mode: resample_torch(torch.zeros(2, 2, 2), (1, 1, 1), mode=mode),
    lambda mode: resample_scipy(np.zeros((2, 2, 2), np.float32), (1, 1, 1), mode=mode),
    lambda mode: resample_cupy(np.zeros((2, 2, 2), np.float32), (1, 1, 1), mode=mode),
])
def test_bad_mode_names_the_allowed_values(function):
    with pytest.raises(ValueError) as error:
        function("cubic")
    assert all(name in str(error.value) for name in MODES)


@pytest.mark.parametrize("shape", [(0, 1, 1), (1, 2), (1, 2, 3, 4), (1.5, 2, 2), (True, 2, 2), "abc", None, (-1, 2, 2)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_shape_is_a_value_error(shape, backend):
    with pytest.raises(ValueError, match="3 positive ints"):
        resample(np.zeros((2, 2, 2), np.float32), shape, backend=backend)


def test_bad_rank_is_a_value_error():
    with pytest.raises(ValueError, match="dimensions"):
        resample(np.zeros((2, 2), np.float32), (1, 1, 1))
    with pytest.raises(ValueError, match="dimensions"):
        resample_torch(torch.zeros(1, 1, 2, 2, 2), (1, 1, 1))


def _cupy_gpu_available() -> bool:
    try:
        import cupy
        return bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


CUPY_GPU = _cupy_gpu_available()


@pytest.mark.skipif(CUPY_GPU, reason="a CUDA GPU with cupy is present")
def test_cupy_backend_without_gpu_raises_a_clear_error():
    with pytest.raises(RuntimeError, match="cupy backend needs a CUDA GPU"):
        resample(np.zeros((2, 2, 2), np.float32), (1, 1, 1), backend="cupy")


@pytest.mark.skipif(not CUPY_GPU, reason="needs cupy and a CUDA GPU")
@pytest.mark.parametrize("in_shape,out_shape", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_cupy_backend_matches_oracle(in_shape, out_shape, mode):
    import cupy
    array = _random(in_shape)
    expected = resample_scipy(array, out_shape, mode=mode)
    tolerance = ORACLE_TOLERANCE if mode == "linear" else 0
    np.testing.assert_allclose(resample(array, out_shape, mode=mode, backend="cupy"), expected, rtol=0, atol=tolerance)
    on_device = resample_cupy(cupy.asarray(array), out_shape, mode=mode)
    assert isinstance(on_device, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(on_device), expected, rtol=0, atol=tolerance)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("in_shape,out_shape", CASES)
def test_torch_cuda_matches_cpu(in_shape, out_shape):
    array = _random(in_shape)
    for mode in MODES:
        cpu = resample(array, out_shape, mode=mode)
        np.testing.assert_allclose(resample(array, out_shape, mode=mode, device="cuda"), cpu, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------ dtypes, memory order

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_dtype_memory_order_and_read_only_inputs(dtype, order, read_only, backend):
    base = _random((2, 5, 7, 6), seed=6, dtype=dtype)
    array = np.array(base, order=order)
    array.setflags(write=not read_only)
    for mode in MODES:
        got = resample(array, (8, 4, 6), mode=mode, backend=backend)
        assert got.dtype == dtype and got.shape == (2, 8, 4, 6)
        expected = resample_scipy(base.astype(np.float64), (8, 4, 6), mode=mode)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ORACLE_TOLERANCE if mode == "linear" else 0)


def test_negative_strides_big_endian_and_integer_inputs():
    base = _random((5, 7, 6), seed=7)
    expected = resample_scipy(base[::-1, :, ::-1], (3, 9, 4))
    np.testing.assert_allclose(resample(base[::-1, :, ::-1], (3, 9, 4)), expected, rtol=0, atol=ORACLE_TOLERANCE)
    np.testing.assert_allclose(resample(base.astype(">f4"), (3, 9, 4)), resample_scipy(base, (3, 9, 4)),
                               rtol=0, atol=ORACLE_TOLERANCE)
    hu = np.random.default_rng(8).integers(-1024, 3000, size=(4, 6, 5)).astype(np.int16)
    got = resample(hu, (7, 3, 5))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, resample_scipy(hu, (7, 3, 5)), rtol=0, atol=1e-3)  # values ~1e3
    assert resample(hu, (7, 3, 5), mode="nearest").dtype == np.int16


def test_half_precision_tensor_keeps_its_dtype():
    tensor = torch.from_numpy(_random((2, 4, 6, 5), seed=9))
    got = resample_torch(tensor.half(), (6, 3, 7))
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), resample_torch(tensor, (6, 3, 7)), rtol=0, atol=1e-2)


# ------------------------------------------------------------------------------- new shape rule

@pytest.mark.parametrize("shape,spacing,new_spacing,expected", [
    ((300, 512, 512), (2.5, 0.8, 0.8), (2.5, 1.6, 1.6), (300, 256, 256)),
    ((100, 333, 333), (5.0, 0.7, 0.7), (2.5, 1.0, 1.0), (200, 233, 233)),  # 233.1 -> 233
    ((120, 256, 256), (1.5, 1.0, 1.0), (1.0, 0.7, 0.7), (180, 366, 366)),  # 365.71 -> 366
    ((5, 3, 1), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (2, 2, 1)),  # 2.5 -> 2, 1.5 -> 2 (half to even), 0.5 -> 1
])
def test_compute_new_shape_examples(shape, spacing, new_spacing, expected):
    got = compute_new_shape(shape, spacing, new_spacing)
    assert got == expected and all(type(s) is int for s in got)


def test_compute_new_shape_rejects_bad_spacing():
    with pytest.raises(ValueError):
        compute_new_shape((3, 3, 3), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        compute_new_shape((3, 3), (1.0, 1.0), (1.0, 1.0))
