"""Volume report (exact mL, tumor hosts) and preview PNG (orientation-independent, true aspect)."""
import ast
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from inference.core.geometry import Geometry
from inference.app.preview import LABEL_COLOURS, to_canonical, write_preview_png
from inference.core.labels import LABEL_NAMES
from inference.app.volumes import volume_report, write_volume_report_json, write_volume_reports_csv

INFERENCE = Path(__file__).resolve().parents[1] / "inference"


def test_label_names():
    assert LABEL_NAMES == {
        1: "liver", 2: "right_kidney", 3: "spleen", 4: "pancreas", 5: "aorta", 6: "inferior_vena_cava",
        7: "right_adrenal_gland", 8: "left_adrenal_gland", 9: "gallbladder", 10: "esophagus",
        11: "stomach", 12: "duodenum", 13: "left_kidney", 14: "tumor"}


def test_organ_volume_of_a_cube_is_exact():
    geometry = Geometry((20, 20, 20), (2.0, 0.5, 0.8))  # 0.8 mm^3 per voxel
    labels = np.zeros(geometry.shape, np.uint8)
    labels[2:12, 3:13, 4:14] = 3  # 1000 voxels of spleen
    report = volume_report(labels, geometry)
    assert report["organs_ml"]["spleen"] == pytest.approx(0.8, rel=1e-12)
    assert report["organs_ml"]["liver"] == 0.0
    assert set(report["organs_ml"]) == {LABEL_NAMES[label] for label in range(1, 14)}
    assert report["tumor"] == {"components": 0, "volume_ml": 0.0, "by_host": {}, "lesions": []}


def test_tumor_components_and_hosts():
    geometry = Geometry((16, 30, 30), (1.0, 2.0, 1.0))  # 2 mm^3 per voxel
    labels = np.zeros(geometry.shape, np.uint8)
    labels[1:15, 1:15, 1:15] = 1  # liver
    labels[1:15, 1:15, 15:22] = 2  # right kidney beside it
    labels[5:8, 5:8, 5:8] = 14  # 27 voxels deep in the liver
    labels[5:7, 5:7, 17:20] = 14  # 12 voxels in the kidney
    labels[5:7, 24:27, 25:28] = 14  # 18 voxels in the background
    labels[10:12, 10:12, 13:15] = 14  # 8 voxels on the border, liver side: liver neighbours dominate
    report = volume_report(labels, geometry)["tumor"]
    assert report["components"] == 4
    assert report["volume_ml"] == pytest.approx((27 + 12 + 18 + 8) * 2 / 1000)
    assert [(lesion["voxels"], lesion["host"]) for lesion in report["lesions"]] == [
        (27, "liver"), (18, "none"), (12, "right_kidney"), (8, "liver")]
    assert report["by_host"]["liver"] == {"components": 2, "volume_ml": pytest.approx(35 * 2 / 1000)}
    assert report["by_host"]["right_kidney"]["components"] == 1
    assert report["by_host"]["none"]["volume_ml"] == pytest.approx(18 * 2 / 1000)


def test_report_writers(tmp_path):
    geometry = Geometry((8, 8, 8), (1.0, 1.0, 1.0))
    labels = np.zeros(geometry.shape, np.uint8)
    labels[1:5, 1:5, 1:5] = 1
    labels[2:3, 2:3, 2:3] = 14
    report = volume_report(labels, geometry)
    write_volume_report_json(tmp_path / "a.json", report)
    assert json.loads((tmp_path / "a.json").read_text()) == report
    write_volume_reports_csv(tmp_path / "all.csv", {"a": report, "b": volume_report(np.zeros_like(labels), geometry)})
    with open(tmp_path / "all.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0] == {"case": "a", "kind": "organ", "name": "liver", "volume_ml": "0.0630", "components": ""}
    assert {"case": "a", "kind": "tumor_host", "name": "liver", "volume_ml": "0.0010", "components": "1"} in rows
    assert {"case": "b", "kind": "tumor", "name": "tumor", "volume_ml": "0.0000", "components": "0"} in rows
    assert len(rows) == 2 * 14 + 1


def test_inference_never_imports_evaluation():
    for source in INFERENCE.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "evaluation" for name in names), source


# ---------------------------------------------------------------- preview

def phantom():
    """Identity-direction (LPS) phantom: liver on the patient's right (low x), a tumor in it."""
    geometry = Geometry((24, 48, 40), (3.0, 1.0, 1.2), origin=(-20.0, -30.0, 100.0))
    zz, yy, xx = np.ogrid[:24, :48, :40]
    body = ((yy - 24) / 22.0) ** 2 + ((xx - 20) / 19.0) ** 2 <= 1
    image = np.broadcast_to(np.where(body, 40.0, -1000.0), geometry.shape).astype(np.float32)
    labels = np.zeros(geometry.shape, np.uint8)
    labels[6:20, 10:30, 4:18] = 1
    labels[4:16, 26:36, 26:34] = 3
    labels[10:13, 15:20, 8:12] = 14
    image[labels > 0] += 30.0
    return image, labels, geometry


def reoriented(image, labels, geometry, flip_axes=(), transpose=None):
    """The same physical scan stored differently: flipped and/or permuted array axes with the
    direction and origin that keep every voxel at its physical position."""
    direction = geometry.direction_matrix.copy()  # columns: physical direction of x, y, z index axes
    origin = np.asarray(geometry.origin, float)
    spacing, shape = list(geometry.spacing), list(geometry.shape)
    for axis in flip_axes:  # array axis (z, y, x order)
        image, labels = np.flip(image, axis), np.flip(labels, axis)
        column = 2 - axis
        origin = origin + direction[:, column] * spacing[axis] * (shape[axis] - 1)
        direction[:, column] *= -1
    if transpose is not None:
        image, labels = np.transpose(image, transpose), np.transpose(labels, transpose)
        columns = [2 - axis for axis in transpose]  # new array axis k is old axis transpose[k]
        direction = direction[:, [columns[2], columns[1], columns[0]]]
        spacing = [spacing[axis] for axis in transpose]
        shape = [shape[axis] for axis in transpose]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels), Geometry(
        tuple(shape), tuple(spacing), tuple(origin), tuple(direction.ravel()))


def test_reoriented_phantom_is_physically_the_same():
    image, labels, geometry = phantom()
    _, labels2, geometry2 = reoriented(image, labels, geometry, flip_axes=(2, 0), transpose=(1, 0, 2))
    for point in [(6, 10, 4), (12, 29, 17)]:  # a voxel keeps its physical position
        physical = geometry.index_to_physical(point)
        flipped = (geometry.shape[0] - 1 - point[0], point[1], geometry.shape[2] - 1 - point[2])
        index2 = (flipped[1], flipped[0], flipped[2])
        np.testing.assert_allclose(geometry2.index_to_physical(index2), physical, atol=1e-9)
        assert labels2[index2] == labels[point]


@pytest.mark.parametrize("flip_axes, transpose", [((2,), None), ((0, 1), None), ((2, 0), (1, 0, 2))])
def test_preview_is_the_same_picture_for_any_storage_order(tmp_path, flip_axes, transpose):
    image, labels, geometry = phantom()
    write_preview_png(tmp_path / "identity.png", image, labels, geometry)
    write_preview_png(tmp_path / "other.png", *reoriented(image, labels, geometry, flip_axes, transpose))
    reference, other = imread(tmp_path / "identity.png"), imread(tmp_path / "other.png")
    assert reference.shape[1] == 1500
    assert 900 < reference.shape[0] < 1300  # two rows: organs and the tumor
    assert reference.std() > 0.05  # not a blank picture
    np.testing.assert_array_equal(reference, other)


def test_canonical_orientation_of_identity_lps():
    image, labels, geometry = phantom()
    canonical, spacing = to_canonical(labels, geometry)
    # Head first (z flipped), anterior first (y kept), patient right first (x kept).
    np.testing.assert_array_equal(canonical, labels[::-1])
    assert spacing == geometry.spacing


def test_preview_keeps_true_proportions_and_has_one_row_without_tumor(tmp_path):
    """A ball of 20 mm radius at 3 x 1 x 1 mm spacing must look round in the coronal view."""
    geometry = Geometry((30, 60, 60), (3.0, 1.0, 1.0))
    zz, yy, xx = np.ogrid[:30, :60, :60]
    labels = ((((zz - 15) * 3.0) ** 2 + (yy - 30.0) ** 2 + (xx - 30.0) ** 2) <= 20 ** 2).astype(np.uint8)
    image = np.zeros(geometry.shape, np.float32)
    write_preview_png(tmp_path / "ball.png", image, labels, geometry)
    picture = imread(tmp_path / "ball.png")[..., :3]
    assert picture.shape[0] < 700  # one row only
    coronal = picture[:-100, picture.shape[1] // 3: 2 * picture.shape[1] // 3]  # above the legend
    # Liver overlay over grey: red clearly above green and blue (the yellow edge letters are not).
    red, green, blue = coronal[..., 0], coronal[..., 1], coronal[..., 2]
    liver = (red - blue > 0.15) & (red - green > 0.15)
    rows, columns = np.flatnonzero(liver.any(axis=1)), np.flatnonzero(liver.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1
    assert height == pytest.approx(width, rel=0.1)


def test_preview_without_matplotlib_raises_clearly(tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    image, labels, geometry = phantom()
    with pytest.raises(RuntimeError, match="matplotlib"):
        write_preview_png(tmp_path / "x.png", image, labels, geometry)


def test_preview_rejects_mismatched_shapes(tmp_path):
    image, labels, geometry = phantom()
    with pytest.raises(ValueError, match="labels shape"):
        write_preview_png(tmp_path / "x.png", image, labels[:-1], geometry)
    assert set(LABEL_COLOURS) == set(LABEL_NAMES)


def test_label_counts_match_bincount_across_slabs():
    from inference.app.volumes import label_counts
    labels = np.random.default_rng(0).integers(0, 20, size=(40, 5, 6)).astype(np.uint8)
    np.testing.assert_array_equal(label_counts(labels, slab=16), np.bincount(labels.ravel(), minlength=15))
