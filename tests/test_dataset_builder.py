"""The synthetic FLARE23-format dataset builder: layout, label subsets, manifest, geometry."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from inference.io.images import read_image
from training.dataset import (DIRECTIONS, MANIFEST_NAME, build_flare_dataset, main, random_geometry,
                              restrict_labels)

COUNTS = dict(n_labeled=2, n_partial=1, n_tumor_only=1, n_unlabeled=2, n_validation=1)
MAX_VOXELS = 60_000


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("flare")
    manifest = build_flare_dataset(root, seed=5, max_voxels=MAX_VOXELS, tumor_probability=0.9, **COUNTS)
    return root, manifest


def read_labels(root, case):
    labels, geometry = read_image(root / case["label"])
    return labels.astype(np.uint8), geometry


def test_folder_layout_and_names(dataset):
    root, manifest = dataset
    cases = manifest["cases"]
    ids = [c["id"] for c in cases]
    assert ids == [f"FLARE23_{i:04d}" for i in range(1, len(cases) + 1)]
    expected = {"dataset_manifest.json"}
    for c in cases:
        folder = {"validation": "imagesVal", "unlabeled": "unlabeledTr"}.get(c["kind"], "imagesTr")
        assert c["image"] == f"{folder}/{c['id']}_0000.nii.gz"
        expected.add(c["image"])
        if c["kind"] == "unlabeled":
            assert c["label"] is None
        else:
            assert c["label"] == f"{'labelsVal' if c['kind'] == 'validation' else 'labelsTr'}/{c['id']}.nii.gz"
            expected.add(c["label"])
    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert written == expected
    assert {p.name for p in root.iterdir() if p.is_dir()} == {"imagesTr", "labelsTr", "unlabeledTr", "imagesVal",
                                                               "labelsVal"}
    assert all(re.fullmatch(r"FLARE23_\d{4}(_0000)?\.nii\.gz", p.name) for p in root.rglob("*.nii.gz"))


def test_manifest_matches_the_files(dataset):
    root, manifest = dataset
    on_disk = json.loads((root / MANIFEST_NAME).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    kinds = [c["kind"] for c in manifest["cases"]]
    assert kinds == ["full"] * 2 + ["partial"] + ["tumor_only"] + ["unlabeled"] * 2 + ["validation"]
    seeds = [c["seed"] for c in manifest["cases"]]
    assert len(set(seeds)) == len(seeds)  # validation cases never reuse a training seed
    for c in manifest["cases"]:
        image, geometry = read_image(root / c["image"])
        assert list(geometry.shape) == c["shape"]
        np.testing.assert_allclose(geometry.spacing, c["spacing"], rtol=1e-6)
        np.testing.assert_allclose(geometry.origin, c["origin"], atol=1e-4)
        np.testing.assert_allclose(geometry.direction, c["direction"], atol=1e-6)
        assert c["phase"] in ("plain", "arterial", "venous")
        assert set(c["tumor_hosts"]) <= {1, 2, 4, 13}
        assert image.min() >= -1024 and image.max() <= 3071
        if c["label"] is not None:
            labels, _ = read_labels(root, c)
            present = sorted(int(v) for v in np.unique(labels) if v)
            assert present == c["labels_present"]


def test_images_and_labels_share_geometry(dataset):
    root, manifest = dataset
    for c in manifest["cases"]:
        if c["label"] is None:
            continue
        image, image_geometry = read_image(root / c["image"])
        labels, label_geometry = read_labels(root, c)
        assert image.shape == labels.shape == image_geometry.shape == label_geometry.shape
        np.testing.assert_allclose(image_geometry.spacing, label_geometry.spacing, rtol=1e-7)
        np.testing.assert_allclose(image_geometry.origin, label_geometry.origin, atol=1e-6)
        np.testing.assert_allclose(image_geometry.direction, label_geometry.direction, atol=1e-9)
        organ = labels > 0
        if organ.any():  # labels lie on the body, not in the air
            assert np.median(image[organ]) > -300


def test_annotated_label_subsets(dataset):
    root, manifest = dataset
    for c in manifest["cases"]:
        if c["label"] is None:
            assert c["annotated_labels"] == [] and c["kind"] == "unlabeled"
            continue
        labels, _ = read_labels(root, c)
        present = set(np.unique(labels).tolist()) - {0}
        assert present <= set(c["annotated_labels"])
        if c["kind"] in ("full", "validation"):
            assert c["annotated_labels"] == list(range(1, 15))
            assert len(present & set(range(1, 14))) >= 8  # whatever the scan range, most organs show
        elif c["kind"] == "partial":
            organs = set(c["annotated_labels"]) - {14}
            assert 1 <= len(organs) < 13 and present
        elif c["kind"] == "tumor_only":
            assert c["annotated_labels"] == [14] and present <= {14}
            assert present == ({14} if c["tumor_hosts"] else set())


def test_random_geometry_ranges():
    rng = np.random.default_rng(0)
    directions = set()
    for _ in range(200):
        g = random_geometry(rng, 2_000_000)
        z, y, x = g["spacing"]
        assert 1.0 <= z <= 5.0 and 0.6 <= y == x <= 1.0
        assert np.prod(g["shape"]) <= 2_000_000 and min(g["shape"]) >= 8
        assert g["direction"] == DIRECTIONS[g["direction_name"]]
        directions.add(g["direction_name"])
        assert g["fov"] in ("abdomen", "chest-abdomen", "abdomen-pelvis", "full")
    assert directions == set(DIRECTIONS)


def test_fixed_geometry_and_determinism(tmp_path):
    options = dict(n_labeled=1, n_partial=1, n_tumor_only=0, n_unlabeled=0, n_validation=0, seed=9,
                   shape=(16, 40, 40), spacing=(4.0, 2.0, 2.0), random_geometry=False)
    first = build_flare_dataset(tmp_path / "a", **options)
    second = build_flare_dataset(tmp_path / "b", **options)
    assert first == second
    for c in first["cases"]:
        assert c["shape"] == [16, 40, 40] and c["spacing"] == [4.0, 2.0, 2.0]
        assert c["direction"] == list(DIRECTIONS["identity"]) and c["fov"] == "abdomen"
        a, _ = read_image(tmp_path / "a" / c["label"])
        b, _ = read_image(tmp_path / "b" / c["label"])
        assert np.array_equal(a, b)


def test_restrict_labels_keeps_organs_under_unannotated_tumours():
    labels = np.array([0, 1, 14, 3, 14, 5], dtype=np.uint8)
    under = np.array([0, 1, 1, 3, 0, 5], dtype=np.uint8)  # the same case without tumours
    assert restrict_labels(labels, (1, 5)).tolist() == [0, 1, 0, 0, 0, 5]
    assert restrict_labels(labels, (1, 5), under).tolist() == [0, 1, 1, 0, 0, 5]
    assert restrict_labels(labels, (14,)).tolist() == [0, 0, 14, 0, 14, 0]
    assert restrict_labels(labels, (1, 14), under).tolist() == [0, 1, 14, 0, 14, 0]


def test_invalid_counts_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="partial"):
        build_flare_dataset(tmp_path, n_labeled=1, n_partial=-1, n_tumor_only=0, n_unlabeled=0, n_validation=0)


def test_cli_writes_a_dataset(tmp_path):
    assert main([str(tmp_path), "--n-labeled", "1", "--n-unlabeled", "1", "--max-voxels", "20000"]) == 0
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert [c["kind"] for c in manifest["cases"]] == ["full", "unlabeled"]
    assert (tmp_path / "unlabeledTr" / "FLARE23_0002_0000.nii.gz").is_file()
