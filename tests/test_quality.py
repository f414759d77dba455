"""Quality flags: clean phantoms and the real CT's reference labels raise none; each rule fires on a
case built to trip it, naming the rule, the subject and the measured value."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from inference.core.geometry import Geometry
from inference.io.images import read_ct, read_image
from phantom import make_phantom
from inference.app.quality import check_quality

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FLIP_XY = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
FEET_FIRST = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
# An adult-sized patient (a 410-mm field of view) on a coarse grid, so that the tests stay fast.
ADULT = dict(shape=(70, 128, 128), spacing=(5.0, 3.2, 3.2))
CHILD = dict(shape=(60, 128, 128), spacing=(2.5, 1.0, 1.0))  # a 128-mm field of view: a small patient
LIVER, RIGHT_KIDNEY, SPLEEN, PANCREAS, RIGHT_ADRENAL, LEFT_KIDNEY, TUMOR = 1, 2, 3, 4, 7, 13, 14


def flags_of(labels, image, geometry) -> dict[tuple[str, str], dict]:
    return {(f["rule"], f["subject"]): f for f in check_quality(labels, image, geometry)["flags"]}


@pytest.fixture(scope="module")
def adult():
    """Seed 2: every organ in view, tumour-free (tumours are added where a test needs them)."""
    return make_phantom(2, tumors=False, fov="abdomen", **ADULT)


@pytest.mark.parametrize("seed, grid, direction, fov", [
    (2, ADULT, IDENTITY, "abdomen"), (4, ADULT, FLIP_XY, "abdomen-pelvis"), (6, ADULT, FEET_FIRST, "chest-abdomen"),
    (1, CHILD, IDENTITY, "abdomen"), (3, CHILD, FLIP_XY, "abdomen"), (7, CHILD, FEET_FIRST, "abdomen-pelvis"),
    (11, dict(shape=(40, 96, 96), spacing=(3.0, 1.4, 1.4)), FLIP_XY, "full"),
])
def test_clean_phantoms_raise_no_flag(seed, grid, direction, fov):
    phantom = make_phantom(seed, direction=direction, fov=fov, **grid)
    quality = check_quality(phantom.labels, phantom.image, phantom.geometry)
    assert quality["flags"] == [], quality["flags"]
    assert quality["body"]["adult_sized"] == (grid is ADULT)


@pytest.mark.parametrize("name", ["TS_example_ct", "TS_example_ct_sm"])
def test_reference_labels_of_the_real_ct_raise_no_flag(name):
    if not (REAL / f"{name}_0000.nii.gz").exists():
        pytest.skip("../shared/data/real not present")
    image, geometry = read_ct(REAL / f"{name}_0000.nii.gz")
    labels = read_image(REAL / "labels" / f"{name}.nii.gz")[0].astype(np.uint8)
    quality = check_quality(labels, image, geometry)
    assert quality["flags"] == [] and quality["body"]["adult_sized"]
    assert "liver" in quality["partial_organs"]  # the scan starts inside the liver


def test_small_liver_trips_the_adult_range_and_the_body_share(adult):
    labels = adult.labels.copy()
    liver = labels == LIVER
    labels[liver & ~ndimage.binary_erosion(liver, iterations=6)] = 0
    flags = flags_of(labels, adult.image, adult.geometry)
    assert flags[("volume_below_adult_range", "liver")]["value"] < 0.6
    assert flags[("volume_below_adult_range", "liver")]["reference"].startswith("0.6-2.5 L")
    assert flags[("volume_low_for_body", "liver")]["value"] < 0.05


def test_partial_field_of_view_skips_volume_low_rules(adult):
    labels = adult.labels
    liver_slices = np.flatnonzero((labels == LIVER).any(axis=(1, 2)))
    cut = slice(0, int(liver_slices[len(liver_slices) // 4]) + 1)  # keeps a quarter of the liver, cut at the top
    geometry = Geometry(labels[cut].shape, adult.geometry.spacing, adult.geometry.origin, adult.geometry.direction)
    quality = check_quality(labels[cut], adult.image[cut], geometry)
    liver_ml = (labels[cut] == LIVER).sum() * np.prod(geometry.spacing) / 1000
    assert liver_ml < 600 and "liver" in quality["partial_organs"]
    assert not [f for f in quality["flags"] if f["subject"] == "liver"], quality["flags"]


def test_large_spleen_trips_the_adult_range(adult):
    labels = adult.labels.copy()
    grown = ndimage.binary_dilation(labels == SPLEEN, iterations=8) & (labels == 0) & (adult.image > -500)
    labels[grown] = SPLEEN
    flags = flags_of(labels, adult.image, adult.geometry)
    assert flags[("volume_above_adult_range", "spleen")]["value"] > 0.5


def test_absolute_ranges_only_for_adult_sized_bodies():
    child = make_phantom(2, tumors=False, fov="abdomen", **CHILD)
    labels = child.labels.copy()
    liver = labels == LIVER
    labels[liver & ~ndimage.binary_erosion(liver, iterations=5)] = 0
    flags = flags_of(labels, child.image, child.geometry)
    assert ("volume_low_for_body", "liver") in flags
    assert not [key for key in flags if key[0].endswith("adult_range")]


def test_missing_organs_whose_neighbours_are_in_view(adult):
    labels = adult.labels.copy()
    labels[np.isin(labels, (PANCREAS, RIGHT_ADRENAL))] = 0
    flags = flags_of(labels, adult.image, adult.geometry)
    assert set(flags) == {("missing_in_fov", "pancreas"), ("missing_in_fov", "right_adrenal_gland")}
    assert flags[("missing_in_fov", "pancreas")]["value"] == 0


def test_missing_organs_are_not_expected_outside_the_field_of_view(adult):
    """Cut above the kidneys' upper poles: no kidney is whole, so nothing is expected of its neighbours."""
    labels = adult.labels
    kidney_top = int(np.flatnonzero((labels == RIGHT_KIDNEY).any(axis=(1, 2)))[-1])
    cut = slice(kidney_top - 3, None)
    geometry = adult.geometry.cropped((cut.start, 0, 0)).with_shape(labels[cut].shape)
    sliced = labels[cut].copy()
    sliced[np.isin(sliced, (PANCREAS, RIGHT_ADRENAL, 8))] = 0
    assert not [f for f in check_quality(sliced, adult.image[cut], geometry)["flags"] if f["rule"] == "missing_in_fov"]


def test_split_liver_is_fragmented(adult):
    labels = adult.labels.copy()
    slices = np.flatnonzero((labels == LIVER).any(axis=(1, 2)))
    for at in (slices[len(slices) // 3], slices[2 * len(slices) // 3]):
        labels[at][labels[at] == LIVER] = 0
    flags = flags_of(labels, adult.image, adult.geometry)
    assert flags[("fragmented", "liver")]["value"] == 3


def test_organ_outside_the_body(adult):
    labels = adult.labels.copy()
    assert adult.image[:, :8, :8].max() < -500  # the corner is air
    labels[20:40, :8, :8] = SPLEEN
    flags = flags_of(labels, adult.image, adult.geometry)
    assert flags[("outside_body", "spleen")]["value"] > 0.1


def test_mirrored_geometry_puts_organs_on_the_wrong_side(adult):
    """The same arrays with the x axis pointing the other way: the patient's left and right swap."""
    geometry = adult.geometry
    matrix = geometry.direction_matrix.copy()
    matrix[:, 0] *= -1
    mirrored = Geometry(geometry.shape, geometry.spacing, geometry.origin, tuple(matrix.ravel()))
    flags = flags_of(adult.labels, adult.image, mirrored)
    assert {("left_right_swapped", "right_kidney/left_kidney"), ("left_right_swapped", "liver/spleen"),
            ("left_right_swapped", "right_adrenal_gland/left_adrenal_gland"), ("wrong_side_of_midline", "liver"),
            ("wrong_side_of_midline", "spleen"), ("wrong_side_of_midline", "gallbladder")} <= set(flags)
    assert flags[("left_right_swapped", "right_kidney/left_kidney")]["value"] < -50  # mm


def test_pancreas_beside_the_right_kidney(adult):
    labels = adult.labels.copy()
    labels[labels == PANCREAS] = 0
    kidney = np.argwhere(labels == RIGHT_KIDNEY)
    z, y, x = kidney.mean(axis=0).astype(int)
    side = int(kidney[:, 2].min()) - 4  # identity direction: lower x index = the patient's right
    labels[z - 2:z + 2, y - 2:y + 2, side - 3:side] = PANCREAS
    flags = flags_of(labels, adult.image, adult.geometry)
    assert ("not_between_kidneys", "pancreas") in flags


def test_small_kidney_trips_the_asymmetry_ratio(adult):
    labels = adult.labels.copy()
    kidney = labels == LEFT_KIDNEY
    labels[kidney & ~ndimage.binary_erosion(kidney, iterations=3)] = 0
    flags = flags_of(labels, adult.image, adult.geometry)
    assert flags[("kidney_volume_ratio", "right_kidney/left_kidney")]["value"] > 2


def _tumour_cubes(labels, organ, count):
    """`count` separate 2x2x2 tumours inside `organ`, far enough apart not to touch."""
    inner = np.argwhere(ndimage.binary_erosion(labels == organ, iterations=2))
    placed = []
    for point in inner[np.argsort(inner[:, 0], kind="stable")]:
        if all(np.abs(point - p).max() > 3 for p in placed):
            placed.append(point)
            labels[tuple(slice(c, c + 2) for c in point)] = TUMOR
        if len(placed) == count:
            return labels
    raise AssertionError("organ too small for the tumours")


def test_many_kidney_tumours_trip_the_count(adult):
    labels = _tumour_cubes(adult.labels.copy(), LEFT_KIDNEY, 4)
    flags = flags_of(labels, adult.image, adult.geometry)
    assert flags[("tumor_count", "left_kidney")]["value"] == 4
    assert set(flags) == {("tumor_count", "left_kidney")}  # the kidney itself is plausible
    assert not flags_of(_tumour_cubes(adult.labels.copy(), LEFT_KIDNEY, 3), adult.image, adult.geometry)


def test_kidney_mostly_tumour_trips_the_burden(adult):
    labels = adult.labels.copy()
    kidney = np.argwhere(labels == LEFT_KIDNEY)
    lower = kidney[:, 0] <= np.quantile(kidney[:, 0], 0.7)
    labels[tuple(kidney[lower].T)] = TUMOR
    flags = flags_of(labels, adult.image, adult.geometry)
    assert flags[("tumor_burden", "left_kidney")]["value"] > 0.5


def test_tumours_in_an_implausible_organ_or_in_no_organ(adult):
    labels = _tumour_cubes(adult.labels.copy(), LIVER, 1)
    slices = np.flatnonzero((labels == LIVER).any(axis=(1, 2)))
    for at in (slices[len(slices) // 3], slices[2 * len(slices) // 3]):
        labels[at][labels[at] == LIVER] = 0  # the liver in three pieces
    fat = np.argwhere(ndimage.binary_erosion((labels == 0) & (adult.image > -500), iterations=3))[0]
    labels[tuple(slice(c, c + 2) for c in fat)] = TUMOR
    flags = flags_of(labels, adult.image, adult.geometry)
    assert ("tumor_in_implausible_organ", "liver") in flags
    assert ("tumor_in_implausible_organ", "none") in flags


def test_nothing_segmented_in_a_body(adult):
    flags = flags_of(np.zeros_like(adult.labels), adult.image, adult.geometry)
    assert set(flags) == {("no_organ_segmented", "case")}


def slow_measure(labels, label, geometry, body):
    """Per-label reference for measure_labels: the label's mask on its own box, scipy's centre of
    mass, cc3d on that mask alone (what the one-pass statistics must reproduce)."""
    import cc3d
    from inference.app.quality.measure import SIGNIFICANT_PIECE_SHARE, cranio_caudal_axis
    box = ndimage.find_objects((labels == label).astype(np.uint8))[0]
    mask = labels[box] == label
    components, count = cc3d.connected_components(mask, connectivity=26, return_N=True)
    sizes = np.bincount(components.ravel())[1:]
    pieces = count if count <= 1 else int((sizes >= SIGNIFICANT_PIECE_SHARE * sizes.max()).sum())
    centroid = np.array(ndimage.center_of_mass(mask)) + [s.start for s in box]
    offsets = [(-s.start) % st for s, st in zip(box, body.stride)]
    sampled = mask[tuple(slice(o, None, st) for o, st in zip(offsets, body.stride))]
    inside = body.mask[tuple(slice((s.start + o) // st, (s.start + o) // st + n)
                             for s, o, st, n in zip(box, offsets, body.stride, sampled.shape))]
    axis = cranio_caudal_axis(geometry)
    return {"volume_ml": mask.sum() * float(np.prod(geometry.spacing)) / 1000, "pieces": pieces,
            "centroid_lps": tuple(geometry.index_to_physical(centroid)), "box_axis": (box[axis].start, box[axis].stop),
            "outside_body_share": float((sampled & ~inside).sum()) / max(int(sampled.sum()), 1)}


@pytest.mark.parametrize("direction", [IDENTITY, FEET_FIRST])
def test_one_pass_measures_equal_per_label_measures(adult, direction):
    """measure_labels (one multi-label components pass) equals measuring each label on its own, on
    fragmented organs, labels touching each other, and a value above the FLARE labels (ignored)."""
    from inference.app.quality.measure import body_outline, cranio_caudal_axis, measure_labels
    geometry = Geometry(adult.geometry.shape, adult.geometry.spacing, direction=direction)
    labels = adult.labels.copy()
    rng = np.random.default_rng(3)
    for label in (LIVER, SPLEEN, RIGHT_ADRENAL):  # scattered specks and blocks far from the organ
        for _ in range(6):
            z, y, x = (rng.integers(0, n - 4) for n in labels.shape)
            labels[z:z + rng.integers(1, 4), y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = label
    labels[60:68, 10:40, 10:40] = LIVER  # a second large piece: the liver is split
    labels[0:3, 0:3, 0:3] = 200  # not a FLARE label
    body = body_outline(adult.image, geometry)
    measured = measure_labels(labels, geometry, body)
    present = sorted(int(v) for v in np.unique(labels) if 0 < v <= TUMOR)
    assert sorted(measured) == present
    axis = cranio_caudal_axis(geometry)
    for label in present:
        reference, ours = slow_measure(labels, label, geometry, body), measured[label]
        assert ours.volume_ml == pytest.approx(reference["volume_ml"], rel=1e-12)
        assert ours.pieces == reference["pieces"]
        np.testing.assert_allclose(ours.centroid_lps, reference["centroid_lps"], rtol=0, atol=1e-6)
        assert ours.outside_body_share == pytest.approx(reference["outside_body_share"], abs=1e-12)
        n, spacing = geometry.shape[axis], geometry.spacing[axis]
        start, stop = reference["box_axis"]
        expected_bottom = start * spacing if geometry.cranial_sign(axis) > 0 else (n - stop) * spacing
        assert ours.bottom_mm == pytest.approx(expected_bottom)
    assert measured[LIVER].pieces > 1 and measure_labels(np.zeros_like(labels), geometry, body) == {}
