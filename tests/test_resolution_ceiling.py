import numpy as np

from benchmarks.resolution_ceiling import ceiling


def test_native_spacing_is_lossless_and_absent_organs_are_nan():
    labels = np.zeros((8, 20, 20), np.uint8)
    labels[2:6, 4:12, 4:12] = 1
    labels[2:6, 13:17, 13:17] = 5
    result = ceiling(labels, (2.0, 1.0, 1.0), (2.0, 1.0, 1.0))
    assert result[0] == 1.0 and result[4] == 1.0
    assert np.isnan(result[1]) and sum(np.isnan(result)) == 11


def test_coarser_spacing_loses_thin_structures_first():
    labels = np.zeros((8, 40, 40), np.uint8)
    labels[:, 5:35, 5:35] = 1  # large block
    labels[:, 20, 2:38] = 10  # a one-voxel-thin line
    result = ceiling(labels, (2.0, 1.0, 1.0), (2.0, 3.0, 3.0))
    assert result[0] > 0.9 > result[9]
