"""Canonical orientation: every axis-aligned layout of one scan gives the same labels in physical space.

The 48 layouts (3! axis orders x 2^3 directions) are made by SimpleITK's DICOMOrient, an
implementation independent of ours, and outputs are brought back to one layout by it too.
Segmenters whose output depends on the array layout (a position oracle, a random-weight nnU-Net)
prove that the network sees the same array whatever the storage; equality is exact.
"""
import itertools
import os

import numpy as np
import pytest
import SimpleITK as sitk

from inference.app.cli import EXIT_OK, main
from inference.engine.runner import EngineOptions, ModelRunner
from inference.core.geometry import Geometry
from inference.io.images import geometry_of, to_sitk
from inference.engine.model import load_model
from inference.io.orientation import CANONICAL_DIRECTION, AxisMap, canonicalize, closest_axis_map, reoriented_geometry
from phantom import make_phantom
from inference.app.pipeline import segment_canonical
from inference.app.segmenters import SingleModelSegmenter
from tests.factories import make_model_folder

LABELS = {"background": 0, "liver": 1, "spleen": 3}
# DICOMOrient codes: one letter of each pair R/L, A/P, S/I per axis, in any order.
ORIENTATIONS = ["".join(letters) for order in itertools.permutations(["RL", "AP", "SI"])
                for letters in itertools.product(*order)]
CANONICAL_CODE = "RAS"  # DICOMOrient's name for direction diag(-1, -1, 1)
ALL_AXIS_MAPS = [AxisMap(p, f) for p in itertools.permutations(range(3))
                 for f in itertools.product((False, True), repeat=3)]


def rotation(axis, degrees):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, shape=(20, 40, 36), spacing=(2.5, 1.6, 1.4), direction=CANONICAL_DIRECTION)


@pytest.fixture(scope="module")
def model_segmenter(tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp("model") / "m", labels=LABELS, seed=1)
    return SingleModelSegmenter(ModelRunner(load_model(folder), EngineOptions()))


class PositionOracle:
    """Labels by array position and intensity: any change of array layout changes its output."""

    def __init__(self):
        self.seen_directions = []

    def segment(self, volume, geometry, timings):
        self.seen_directions.append(geometry.direction)
        z = np.arange(volume.shape[0])[:, None, None]
        x = np.arange(volume.shape[2])[None, None, :]
        labels = np.zeros(volume.shape, np.uint8)
        labels[(volume > -200) & (z < volume.shape[0] // 3)] = 1
        labels[(volume > -200) & (x < volume.shape[2] // 4)] = 3
        return labels


def as_layout(image, code):
    """(array, Geometry) of `image` stored in orientation `code`."""
    oriented = sitk.DICOMOrient(image, code)
    return sitk.GetArrayFromImage(oriented), geometry_of(oriented)


def back_to_canonical(labels, geometry):
    image = sitk.DICOMOrient(to_sitk(labels, geometry), CANONICAL_CODE)
    return sitk.GetArrayFromImage(image), geometry_of(image)


def assert_same_geometry(a: Geometry, b: Geometry):
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-9)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-6)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-12)


def test_48_layouts_are_distinct_and_include_the_canonical_one(phantom):
    image = to_sitk(phantom.image, phantom.geometry)
    directions = {tuple(np.round(as_layout(image, code)[1].direction, 6)) for code in ORIENTATIONS}
    assert len(ORIENTATIONS) == len(directions) == 48
    assert CANONICAL_DIRECTION in directions


@pytest.mark.parametrize("code", ORIENTATIONS)
def test_every_layout_canonicalises_to_the_same_array_and_restores_exactly(phantom, code):
    volume, geometry = as_layout(to_sitk(phantom.image, phantom.geometry), code)
    view, canonical, restore = canonicalize(volume, geometry)
    np.testing.assert_array_equal(view, phantom.image)  # the network sees exactly the canonical scan
    assert_same_geometry(canonical, phantom.geometry)
    assert np.shares_memory(view, volume)  # a view, no copy
    restored = restore(view)
    np.testing.assert_array_equal(restored, volume)
    assert restored.flags.c_contiguous


@pytest.fixture(scope="module")
def small_phantom():
    """One 16x32x32 patch of the test model covers it: 48 model runs stay fast."""
    return make_phantom(3, shape=(12, 28, 24), spacing=(2.5, 1.6, 1.4), direction=CANONICAL_DIRECTION)


@pytest.mark.parametrize("segmenter_name", ["oracle", "model"])
def test_labels_in_physical_space_do_not_depend_on_the_storage_layout(phantom, small_phantom, segmenter_name,
                                                                      model_segmenter):
    scan = phantom if segmenter_name == "oracle" else small_phantom
    segmenter = PositionOracle() if segmenter_name == "oracle" else model_segmenter
    image = to_sitk(scan.image.astype(np.float32), scan.geometry)  # read_image's dtype
    reference = segmenter.segment(sitk.GetArrayFromImage(image), scan.geometry, {})
    assert len(np.unique(reference)) > 1
    unaware_differs = 0
    for index, code in enumerate(ORIENTATIONS):
        volume, geometry = as_layout(image, code)
        if segmenter_name == "oracle":
            segmenter.seen_directions.clear()
        labels = segment_canonical(segmenter, volume, geometry, {})
        if segmenter_name == "oracle":  # the segmenter saw the canonical layout
            assert np.allclose(segmenter.seen_directions, [CANONICAL_DIRECTION])
        assert labels.shape == volume.shape and labels.dtype == np.uint8  # on the input's own grid
        physical, physical_geometry = back_to_canonical(labels, geometry)
        np.testing.assert_array_equal(physical, reference, err_msg=code)
        assert_same_geometry(physical_geometry, scan.geometry)
        if segmenter_name == "oracle" or index % 6 == 1:  # the model: 8 layouts suffice to show it
            unaware = back_to_canonical(segmenter.segment(volume, geometry, {}), geometry)[0]
            unaware_differs += not np.array_equal(unaware, reference)
    assert unaware_differs >= (40 if segmenter_name == "oracle" else 6)  # without canonicalisation, layout matters


def test_canonical_scans_pass_through_untouched(phantom):
    volume = phantom.image
    view, canonical, restore = canonicalize(volume, phantom.geometry)
    assert view is volume and canonical is phantom.geometry
    labels = np.zeros(volume.shape, np.uint8)
    assert restore(labels) is labels


def test_the_real_ct_is_stored_canonically():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real", "TS_example_ct_sm_0000.nii.gz")
    if not os.path.exists(path):
        pytest.skip("../shared/data/real not present")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    assert closest_axis_map(reader.GetDirection()).is_identity


@pytest.mark.parametrize("axis_map", ALL_AXIS_MAPS, ids=str)
def test_restore_inverts_canonicalize_for_odd_shapes(axis_map):
    base = Geometry((3, 4, 5), (2.0, 0.7, 0.9), (10.0, -20.0, 5.0), CANONICAL_DIRECTION)
    geometry = reoriented_geometry(base, axis_map)
    volume = np.arange(60, dtype=np.float32).reshape(geometry.shape)
    view, canonical, restore = canonicalize(volume, geometry)
    assert view.shape == (3, 4, 5)
    assert_same_geometry(canonical, base)
    np.testing.assert_array_equal(restore(view.astype(np.uint8)), volume.astype(np.uint8))
    if axis_map.is_identity:
        return  # nothing to restore: labels are returned as they are
    with pytest.raises(ValueError, match="canonical shape"):
        restore(np.zeros((1, 2, 3), np.uint8))


def test_reoriented_geometry_keeps_every_voxel_at_its_physical_position():
    geometry = Geometry((4, 5, 6), (2.5, 0.8, 0.7), (3.0, -4.0, 5.0),
                        tuple((rotation(1, 17) @ np.diag([1.0, -1.0, -1.0])).ravel()))
    index = np.indices(geometry.shape).reshape(3, -1).T
    for axis_map in ALL_AXIS_MAPS:
        new = reoriented_geometry(geometry, axis_map)
        moved = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1).reshape(-1, 3)
        # where does original voxel `index` land in the new layout?
        new_index = np.empty_like(index)
        for new_axis, (old_axis, flip) in enumerate(zip(axis_map.permutation, axis_map.flips)):
            new_index[:, new_axis] = geometry.shape[old_axis] - 1 - index[:, old_axis] if flip else index[:, old_axis]
        np.testing.assert_allclose(new.index_to_physical(new_index), geometry.index_to_physical(moved), atol=1e-9)


@pytest.mark.parametrize("base_rotation", [rotation(2, 20), rotation(0, -15) @ rotation(1, 25), rotation(2, 44)])
def test_oblique_scans_take_the_closest_axis_aligned_layout(base_rotation):
    """The residual rotation stays in the geometry; every layout of the scan gives the same canonical array."""
    direction = tuple((base_rotation @ np.diag([-1.0, -1.0, 1.0])).ravel())
    rng = np.random.default_rng(0)
    image = to_sitk(rng.integers(-1000, 1000, (6, 7, 8)).astype(np.int16),
                    Geometry((6, 7, 8), (2.5, 0.9, 0.8), (1.0, 2.0, 3.0), direction))
    reference_volume, reference_geometry = sitk.GetArrayFromImage(image), geometry_of(image)
    reference_view, reference_canonical, _ = canonicalize(reference_volume, reference_geometry)
    assert closest_axis_map(reference_canonical.direction).is_identity  # already closest to the target
    target = np.asarray(CANONICAL_DIRECTION).reshape(3, 3)
    canonical = reference_canonical.direction_matrix
    assert np.all(np.diag(target.T @ canonical) > 0.7)  # each axis within 45 degrees of its target
    for code in ["LPS", "SAR", "IRP", "PIL"]:
        volume, geometry = as_layout(image, code)
        view, canonical_geometry, restore = canonicalize(volume, geometry)
        np.testing.assert_array_equal(view, reference_view)
        assert_same_geometry(canonical_geometry, reference_canonical)
        np.testing.assert_array_equal(restore(view), volume)


def test_cli_runs_every_layout_in_canonical_orientation_unless_asked_not_to(tmp_path, small_phantom):
    """End to end with files: outputs keep each input's geometry and agree in physical space."""
    folder = make_model_folder(tmp_path / "model", labels=LABELS, seed=1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = to_sitk(small_phantom.image, small_phantom.geometry)
    codes = [CANONICAL_CODE, "LPS", "SLP", "PRI"]
    for code in codes:
        sitk.WriteImage(sitk.DICOMOrient(image, code), str(inputs / f"{code}_0000.nii.gz"))
    results = {}
    for flag in ([], ["--keep-orientation"]):
        out = tmp_path / f"out{len(flag)}"
        assert main(["-i", str(inputs), "-o", str(out), "--model", str(folder), "--report", "-", "--no-progress",
                     *flag]) == EXIT_OK
        for code in codes:
            written = sitk.ReadImage(str(out / f"{code}.nii.gz"))
            source = sitk.ReadImage(str(inputs / f"{code}_0000.nii.gz"))
            assert written.GetSize() == source.GetSize()
            assert written.GetDirection() == pytest.approx(source.GetDirection())
            assert written.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-4)
            results[code, bool(flag)] = sitk.GetArrayFromImage(sitk.DICOMOrient(written, CANONICAL_CODE))
    for code in codes:
        np.testing.assert_array_equal(results[code, False], results[CANONICAL_CODE, False])
    assert any(not np.array_equal(results[code, True], results[CANONICAL_CODE, True]) for code in codes[1:])
