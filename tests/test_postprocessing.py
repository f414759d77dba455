"""Organ post-processing: exact small cases and a differential test against a per-label scipy reference."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.cascade.postprocessing import DEFAULT_ORGAN_RULES, ComponentRule, apply_rules, parse_rules, postprocess_organs

FULL_26 = np.ones((3, 3, 3), dtype=bool)



# One-label shorthands of apply_rules, for these tests.
def keep_largest_component(labels, label: int) -> np.ndarray:
    """Only the largest 26-connected component of `label` stays; other labels are untouched."""
    return apply_rules(labels, {int(label): ComponentRule(largest_only=True)})


def remove_small_components(labels, label: int, *, min_voxels: int = 0,
                            min_fraction_of_largest: float = 0.0) -> np.ndarray:
    """Components of `label` with fewer than `min_voxels` voxels, or smaller than
    `min_fraction_of_largest` of that label's largest component, become background."""
    if not min_voxels and not min_fraction_of_largest:
        raise ValueError("give min_voxels or min_fraction_of_largest")
    return apply_rules(labels, {int(label): ComponentRule(min_voxels=min_voxels,
                                                          min_fraction_of_largest=min_fraction_of_largest)})


def reference(labels: np.ndarray, rules: dict[int, ComponentRule]) -> np.ndarray:
    """Brute force: one scipy.ndimage.label pass per label, in C order (ties: lowest scipy id)."""
    labels = np.ascontiguousarray(labels)
    result = labels.copy()
    for label, rule in rules.items():
        components, count = ndimage.label(labels == label, structure=FULL_26)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        largest = sizes.max()
        for index, size in enumerate(sizes, start=1):
            keep = size >= rule.min_voxels and size >= rule.min_fraction_of_largest * largest
            if rule.largest_only:
                keep = keep and index == int(np.argmax(sizes)) + 1  # scipy ids follow C order
            if not keep:
                result[components == index] = 0
    return result


def blobby_labels(seed: int, shape=(18, 22, 20), n_labels=13, dtype=np.uint8) -> np.ndarray:
    """Random label maps with components of many sizes (smoothed noise, thresholded per label)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((n_labels + 1, *shape)), sigma=(0, 1.2, 1.2, 1.2))
    labels = np.argmax(noise, axis=0).astype(dtype)
    labels[rng.random(shape) < 0.02] = rng.integers(1, n_labels + 1)  # isolated specks
    return labels


RANDOM_RULES = {
    "defaults": DEFAULT_ORGAN_RULES,
    "mixed": {1: ComponentRule(largest_only=True), 2: ComponentRule(min_voxels=5),
              3: ComponentRule(min_fraction_of_largest=0.3), 4: ComponentRule(largest_only=True, min_voxels=10**6),
              5: ComponentRule(min_voxels=3, min_fraction_of_largest=0.05)},
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rules", RANDOM_RULES.values(), ids=RANDOM_RULES.keys())
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_matches_scipy_reference(seed, rules, dtype, order):
    labels = np.asarray(blobby_labels(seed, dtype=dtype), order=order)
    labels.setflags(write=False)
    before = labels.copy()
    result = apply_rules(labels, rules)
    np.testing.assert_array_equal(result, reference(labels, rules))
    assert result.dtype == labels.dtype and result.shape == labels.shape
    np.testing.assert_array_equal(labels, before)


def test_ties_go_to_first_component_in_c_order_for_any_layout():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[4, 0, 0] = 1  # first in F (memory) order, where z varies fastest
    labels[0, 0, 4] = 1  # first in C order
    for array in (labels, np.asfortranarray(labels)):
        result = keep_largest_component(array, 1)
        assert result[0, 0, 4] == 1 and result[4, 0, 0] == 0


def test_keep_largest_component_exact():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels
    labels[4:6, 4:6, 4] = 1  # 4 voxels, not touching
    labels[3, 3, 3] = 2  # other label untouched
    result = keep_largest_component(labels, 1)
    expected = labels.copy()
    expected[4:6, 4:6, 4] = 0
    np.testing.assert_array_equal(result, expected)


def test_diagonal_neighbours_are_one_component():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = labels[2, 2, 2] = 1  # corner-touching chain: 26-connected
    labels[0, 3, 3] = 1
    result = keep_largest_component(labels, 1)
    assert result[0, 3, 3] == 0 and result[2, 2, 2] == 1 and result.sum() == 3


def test_remove_small_components_min_voxels_and_fraction():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0:5, 0:5, 0:4] = 2  # 100 voxels
    labels[8:10, 8:10, 8:10] = 2  # 8 voxels
    labels[0:3, 8:10, 8:10] = 2  # 12 voxels
    result = remove_small_components(labels, 2, min_voxels=10)
    assert result[9, 9, 9] == 0 and result[0, 9, 9] == 2 and result[0, 0, 0] == 2
    result = remove_small_components(labels, 2, min_fraction_of_largest=0.1)  # 10 voxels needed
    assert result[9, 9, 9] == 0 and result[0, 9, 9] == 2
    result = remove_small_components(labels, 2, min_fraction_of_largest=0.12)  # 12 voxels needed: kept
    assert result[0, 9, 9] == 2
    result = remove_small_components(labels, 2, min_fraction_of_largest=0.121)
    assert result[0, 9, 9] == 0 and result[0, 0, 0] == 2
    with pytest.raises(ValueError, match="min_voxels or min_fraction_of_largest"):
        remove_small_components(labels, 2)


def test_default_rules():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[0:4, 0:4, 0:4] = 1  # liver, 64
    labels[8:10, 8:10, 8:10] = 1  # liver fragment, 8: removed (largest only)
    labels[0:4, 8:12, 0:4] = 13  # left kidney, 64
    labels[8:10, 0:2, 8:10] = 13  # kidney piece, 8 >= 0.1 * 64: kept
    labels[11, 11, 0] = 13  # 1 voxel < 6.4: removed
    labels[6, 0, 11] = 14  # tumor has no rule: untouched
    result = postprocess_organs(labels)
    assert result[8, 8, 8] == 0 and result[0, 0, 0] == 1
    assert result[8, 0, 8] == 13 and result[11, 11, 0] == 0
    assert result[6, 0, 11] == 14


@pytest.mark.parametrize("shape", [(0, 5, 5), (3, 0, 4), (0, 0, 0)])
def test_empty_arrays(shape):
    labels = np.zeros(shape, np.uint8)
    result = postprocess_organs(labels)
    assert result.shape == shape and result.dtype == np.uint8


def test_all_background_and_no_rules():
    labels = np.zeros((3, 4, 5), np.uint8)
    np.testing.assert_array_equal(postprocess_organs(labels), labels)
    noisy = blobby_labels(9)
    result = postprocess_organs(noisy, {})
    np.testing.assert_array_equal(result, noisy)
    assert result is not noisy


def test_parse_rules_from_manifest_json():
    rules = parse_rules({"1": {"largest_only": True}, "2": {"min_fraction_of_largest": 0.1, "min_voxels": 3}})
    assert rules == {1: ComponentRule(largest_only=True), 2: ComponentRule(min_voxels=3, min_fraction_of_largest=0.1)}
    with pytest.raises(ValueError, match="allowed: \\['largest_only', 'min_voxels', 'min_fraction_of_largest'\\]"):
        parse_rules({"1": {"largest": True}})
    with pytest.raises(ValueError, match="not an integer label"):
        parse_rules({"liver": {"largest_only": True}})
    with pytest.raises(ValueError, match="min_fraction_of_largest"):
        parse_rules({"1": {"min_fraction_of_largest": 2}})


def test_rejects_non_integer_labels():
    with pytest.raises(ValueError, match="integer dtype"):
        postprocess_organs(np.zeros((2, 2, 2), np.float32))
