"""The synthetic CT phantom: determinism, anatomy, intensities, orientation invariance, tumours, I/O."""
from __future__ import annotations

import math
from functools import lru_cache

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from inference.io.images import read_image, to_sitk
from inference.core.labels import ORGAN_LABELS, TUMOR_HOSTS
from phantom import PHASES, Phantom, make_phantom, write_phantom

FLIP_XY = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # NIfTI converted from DICOM
FEET_FIRST = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@lru_cache(maxsize=None)
def phantom(seed: int, **options) -> Phantom:
    return make_phantom(seed, **options)


def cached(seed: int, **options) -> Phantom:
    return phantom(seed, **{k: v for k, v in sorted(options.items())})


def centroid_lps(p: Phantom, label: int) -> np.ndarray:
    index = np.argwhere(p.labels == label)
    assert len(index), f"label {label} absent"
    return p.geometry.index_to_physical(index.mean(axis=0))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def on_grid_of(moving: Phantom, reference: Phantom, image=False) -> np.ndarray:
    """`moving`'s labels (or image) resampled onto `reference`'s grid, nearest neighbour."""
    array = moving.image if image else moving.labels
    resampled = sitk.Resample(to_sitk(array, moving.geometry), to_sitk(reference.labels, reference.geometry),
                              sitk.Transform(), sitk.sitkNearestNeighbor, -2000 if image else 255)
    return sitk.GetArrayFromImage(resampled)


# ---- determinism and basic contract ------------------------------------------------------------

def test_same_seed_gives_identical_phantoms():
    a, b = make_phantom(11), make_phantom(11)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert (a.geometry, a.phase, a.tumor_hosts) == (b.geometry, b.phase, b.tumor_hosts)


def test_different_seeds_differ():
    a, b = cached(0), cached(1)
    assert not np.array_equal(a.labels, b.labels)
    assert np.mean(a.image != b.image) > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_contract_dtypes_shapes_and_all_organs_present(seed):
    p = cached(seed)
    assert p.image.dtype == np.int16 and p.labels.dtype == np.uint8
    assert p.image.shape == p.labels.shape == p.geometry.shape == (64, 128, 128)
    assert p.geometry.spacing == (2.5, 1.6, 1.6)
    assert p.phase in PHASES
    assert set(np.unique(p.labels)) <= set(range(15))
    counts = np.bincount(p.labels.ravel(), minlength=15)
    small = {label: int(counts[label]) for label in ORGAN_LABELS if counts[label] < 200}
    assert not small, f"organs with < 200 voxels: {small}"
    assert set(p.tumor_hosts) <= set(TUMOR_HOSTS)


def test_phase_and_fov_options_are_honoured_and_validated():
    assert make_phantom(4, phase="plain").phase == "plain"
    assert make_phantom(4, shape=(16, 32, 32), fov="random").labels.shape == (16, 32, 32)
    with pytest.raises(ValueError, match="phase"):
        make_phantom(0, phase="delayed")
    with pytest.raises(ValueError, match="fov"):
        make_phantom(0, fov="head")


def test_body_is_centred_in_the_field_of_view():
    p = cached(2)
    body = np.argwhere(p.image > -500)
    centre_index = (np.array(p.geometry.shape) - 1) / 2
    for axis in (1, 2):  # in-plane: the body's bounding box is centred within 5 % of the FOV
        middle = (body[:, axis].min() + body[:, axis].max()) / 2
        assert abs(middle - centre_index[axis]) < 0.05 * p.geometry.shape[axis]
        assert body[:, axis].min() > 0 and body[:, axis].max() < p.geometry.shape[axis] - 1  # air all around


# ---- intensities --------------------------------------------------------------------------------

@pytest.mark.parametrize("phase, liver, aorta", [
    ("plain", (40, 70), (0, 80)),
    ("arterial", (55, 95), (300, 560)),
    ("venous", (90, 135), (120, 230)),
])
def test_organ_hu_by_phase(phase, liver, aorta):
    p = cached(3, phase=phase)
    assert liver[0] <= np.median(p.image[p.labels == 1]) <= liver[1]
    assert aorta[0] <= np.median(p.image[p.labels == 5]) <= aorta[1]
    if phase == "arterial":  # corticomedullary phase: kidneys brighter than liver
        assert np.median(p.image[p.labels == 2]) > np.median(p.image[p.labels == 1]) + 40


def test_air_fat_bone_and_lung():
    p = cached(3, fov="chest-abdomen")
    corner = p.image[:4, :6, :6]
    assert corner.max() < -900 and (corner != 0).all()
    body = p.image > -500
    fat = (p.image > -150) & (p.image < -60) & (p.labels == 0)
    assert fat.sum() > 0.05 * body.sum()
    assert (p.image > 400).sum() > 0.01 * body.sum()  # spine and ribs
    lung = (p.image > -920) & (p.image < -780)
    assert lung.sum() > 0.03 * p.image.size


def test_contrast_switch_threshold_is_crossed_only_in_arterial_phase():
    arterial = [np.median(cached(s, phase="arterial").image[cached(s, phase="arterial").labels == 5])
                for s in range(6)]
    assert max(arterial) >= 445, arterial
    for phase in ("plain", "venous"):
        for s in range(3):
            p = cached(s, phase=phase)
            assert np.median(p.image[p.labels == 5]) < 445


# ---- anatomy in physical (LPS) space -----------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anatomical_relations_in_lps(seed):
    p = cached(seed)
    c = {label: centroid_lps(p, label) for label in ORGAN_LABELS}
    x, y, z = 0, 1, 2
    assert c[1][x] < c[3][x] - 50  # liver on the patient's right of the spleen
    assert c[2][x] < 0 < c[13][x]  # right kidney on the right, left kidney on the left
    assert c[6][x] < c[5][x]  # IVC right of the aorta
    assert c[2][y] > c[4][y] and c[13][y] > c[4][y]  # kidneys posterior of the pancreas
    assert c[11][y] < c[13][y] and c[11][x] > 0  # stomach anterior, on the left
    assert c[7][z] > c[2][z] and c[8][z] > c[13][z]  # adrenals above the kidneys
    assert c[10][z] > c[11][z]  # oesophagus above the stomach
    assert c[9][z] < c[1][z]  # gallbladder under the liver
    body = np.argwhere(p.image > -500)
    body_x = p.geometry.index_to_physical(body[[body[:, 2].argmin(), body[:, 2].argmax()]])[:, x]
    width = abs(body_x[1] - body_x[0])
    assert abs(c[5][x] - body_x.mean()) < 0.1 * width  # aorta near the midline
    assert c[5][y] < min(c[2][y], c[13][y])  # ... in front of the spine, anterior of the kidneys


def test_aorta_spans_the_abdomen_and_the_oesophagus_stays_above_the_stomach():
    p = cached(5, fov="chest-abdomen")
    z_axis = 0
    slices_with = lambda label: np.flatnonzero((p.labels == label).any(axis=(1, 2)))  # noqa: E731
    aorta, oesophagus, stomach = slices_with(5), slices_with(10), slices_with(11)
    kidneys = np.union1d(slices_with(2), slices_with(13))
    assert aorta.min() <= kidneys.min() and aorta.max() == p.geometry.shape[z_axis] - 1  # into the chest
    assert np.median(oesophagus) > np.median(stomach)


# ---- orientation --------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", [FLIP_XY, FEET_FIRST], ids=["diag(-1,-1,1)", "feet-first"])
def test_same_anatomy_in_physical_space_for_any_axis_direction(direction):
    reference, other = cached(5), cached(5, direction=direction)
    assert other.geometry.direction == direction
    mapped = on_grid_of(other, reference)
    for label in ORGAN_LABELS + (14,):
        assert dice(mapped == label, reference.labels == label) > 0.95, label
    # the rasterisation is exact for axis-aligned directions: images agree voxel for voxel
    assert np.mean(on_grid_of(other, reference, image=True) == reference.image) > 0.99


def test_oblique_direction_is_resampled_consistently():
    angle = 0.3
    c, s = math.cos(angle), math.sin(angle)
    reference, other = cached(5), cached(5, direction=(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    mapped = on_grid_of(other, reference)
    inside = mapped != 255
    for label in (1, 2, 3, 5, 11, 13):
        assert dice((mapped == label) & inside, (reference.labels == label) & inside) > 0.9, label


# ---- tumours ------------------------------------------------------------------------------------

def test_tumors_sit_in_their_hosts_and_can_be_switched_off():
    p = cached(0)
    assert p.tumor_hosts and (p.labels == 14).any()
    components = cc3d.connected_components(p.labels == 14, connectivity=26)
    hosts_touched = set()
    for index in range(1, int(components.max()) + 1):
        blob = components == index
        box = tuple(slice(max(a.min() - 1, 0), a.max() + 2) for a in np.nonzero(blob))
        shell = ndimage.binary_dilation(blob[box], np.ones((3, 3, 3), bool)) & ~blob[box]
        neighbours = set(np.unique(p.labels[box][shell]).tolist()) & set(TUMOR_HOSTS)
        assert neighbours, f"tumour component {index} touches none of {TUMOR_HOSTS}"
        hosts_touched |= neighbours & set(p.tumor_hosts)
    assert hosts_touched == set(p.tumor_hosts)
    clean = cached(0, tumors=False)
    assert clean.tumor_hosts == () and not (clean.labels == 14).any()
    outside = p.labels != 14  # same anatomy: only tumour voxels differ
    assert np.array_equal(p.labels[outside], clean.labels[outside])
    assert set(np.unique(clean.labels[~outside])) <= set(TUMOR_HOSTS) | {0}


def test_tumor_contrast_and_probability():
    assert make_phantom(0, shape=(32, 64, 64), tumor_probability=0.0).tumor_hosts == ()
    checked = 0
    for seed in (0, 1, 2):
        p = cached(seed, phase="venous")
        components = cc3d.connected_components(p.labels == 14, connectivity=26)
        for index, size in enumerate(np.bincount(components.ravel())[1:], start=1):
            if size < 150:
                continue
            blob = components == index
            shell = ndimage.binary_dilation(blob, iterations=2) & ~blob
            hosts = [h for h in p.tumor_hosts if (p.labels[shell] == h).any()]
            host = max(hosts, key=lambda h: (p.labels[shell] == h).sum())
            contrast = abs(np.median(p.image[blob]) - np.median(p.image[p.labels == host]))
            assert contrast > 20, (seed, index, host, contrast)  # hypo- or hyperdense against its host
            checked += 1
    assert checked >= 3


# ---- files --------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", [None, FLIP_XY])
def test_write_phantom_round_trips(tmp_path, direction):
    p = make_phantom(6, shape=(24, 48, 40), spacing=(3.0, 1.5, 1.25), direction=direction)
    image_path, label_path = tmp_path / "case_0000.nii.gz", tmp_path / "case.nii.gz"
    write_phantom(p, image_path, label_path)
    image, geometry = read_image(image_path)
    labels, label_geometry = read_image(label_path)
    assert np.array_equal(image, p.image.astype(np.float32))
    assert np.array_equal(labels, p.labels.astype(np.float32))
    for g in (geometry, label_geometry):
        assert g.shape == p.geometry.shape
        np.testing.assert_allclose(g.spacing, p.geometry.spacing, rtol=1e-6)
        np.testing.assert_allclose(g.origin, p.geometry.origin, atol=1e-4)
        np.testing.assert_allclose(g.direction, p.geometry.direction, atol=1e-6)
    assert sitk.ReadImage(str(image_path)).GetPixelID() == sitk.sitkInt16
    assert sitk.ReadImage(str(label_path)).GetPixelID() == sitk.sitkUInt8
    assert not list(tmp_path.glob(".*partial*"))
