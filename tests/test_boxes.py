"""The one foreground bounding box of the engine, the cascade and preprocessing: numpy and torch
inputs against the box read off `np.argwhere`."""
import numpy as np
import pytest
import torch

from inference.core.boxes import axis_extent, foreground_box, foreground_extents


def reference_extents(values: np.ndarray):
    points = np.argwhere(values != 0)
    if points.size == 0:
        return None
    return tuple((int(lo), int(hi) + 1) for lo, hi in zip(points.min(axis=0), points.max(axis=0)))


@pytest.mark.parametrize("seed", range(20))
def test_extents_match_the_reference_on_random_sparse_maps(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 9, size=int(rng.integers(1, 4))))
    values = np.where(rng.random(shape) < 0.05, rng.integers(1, 15, size=shape), 0).astype(np.uint8)
    expected = reference_extents(values)
    assert foreground_extents(values) == expected
    assert foreground_extents(values != 0) == expected
    assert foreground_extents(torch.from_numpy(values)) == expected
    assert foreground_extents(torch.from_numpy(values != 0)) == expected
    box = foreground_box(values)
    assert (box is None) == (expected is None)
    if box is not None:
        assert np.count_nonzero(values[box]) == np.count_nonzero(values)
        assert axis_extent(values != 0, 0) == expected[0]


def test_an_empty_map_has_no_box():
    assert foreground_box(np.zeros((3, 4, 5), np.int16)) is None
    assert axis_extent(np.zeros((3, 4), bool), 1) is None
