"""Lesion-wise tumour analysis: exact oracles on planted components, and the CLI's --lesions output."""
import csv
import json

import numpy as np
import pytest

from evaluation.cli import main
from evaluation.lesions import case_lesions, summarize_lesions
from inference.core.geometry import Geometry
from inference.io.images import write_labels
from inference.core.labels import LABEL_NAMES

SPACING = (2.0, 1.0, 0.5)  # one voxel = 1 mm3
VOXEL_MM3 = 1.0


def planted_case():
    """Liver (1) with a 2x4x4 tumour inside, found on half its voxels; right kidney (2) with a 1x2x2
    tumour at its border, missed; predicted tumour components in the spleen (3, 8 voxels), in the
    background (1 voxel) and one that overlaps the liver tumour by one voxel only (not a false one)."""
    gt = np.zeros((10, 20, 20), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:7, 1:9, 1:9] = 1
    gt[2:4, 3:7, 3:7] = 14
    pred[2:3, 3:7, 3:7] = 14  # half of the liver tumour
    gt[1:5, 12:18, 12:18] = 2
    gt[1:2, 12:14, 12:14] = 14  # kidney tumour on the kidney's corner, touching background
    gt[6:9, 12:18, 12:18] = 3
    pred[7:9, 14:16, 14:16] = 14  # false lesion inside the spleen
    pred[9, 0, 19] = 14  # false lesion in the background
    return gt, pred


def test_true_and_false_lesions_with_hosts_volumes_and_found_share():
    gt, pred = planted_case()
    lesions = case_lesions("c", gt, pred, SPACING)
    true = sorted((l.host, l.volume_mm3, l.found_fraction, l.detected) for l in lesions if l.kind == "true")
    false = sorted((l.host, l.volume_mm3) for l in lesions if l.kind == "false")
    assert true == [(1, 32 * VOXEL_MM3, 0.5, True), (2, 4 * VOXEL_MM3, 0.0, False)]
    assert false == [(0, 1 * VOXEL_MM3), (3, 8 * VOXEL_MM3)]


def test_a_predicted_component_touching_a_true_tumour_is_not_false():
    gt, pred = planted_case()
    pred[2, 3, 3] = 0
    pred[2:3, 3:7, 3:7] = 0
    pred[3, 6, 6:12] = 14  # one voxel inside the tumour, five outside it
    lesions = case_lesions("c", gt, pred, SPACING)
    liver = next(l for l in lesions if l.kind == "true" and l.host == 1)
    assert liver.found_fraction == pytest.approx(1 / 32) and liver.detected
    assert sorted(l.host for l in lesions if l.kind == "false") == [0, 3]


def test_components_are_26_connected():
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[1, 1, 1] = gt[2, 2, 2] = 14  # corners touch: one lesion
    lesions = case_lesions("c", gt, np.zeros_like(gt), (1.0, 1.0, 1.0))
    assert [(l.kind, l.volume_mm3, l.host) for l in lesions] == [("true", 2.0, 0)]


def test_summary_counts_by_host_size_and_false_location():
    gt, pred = planted_case()
    summary = summarize_lesions(case_lesions("a", gt, pred, SPACING) + case_lesions("b", gt, gt, SPACING),
                                LABEL_NAMES)
    assert summary["true"] == {"lesions": 4, "detected": 3, "volume_mm3": 72.0, "found_volume_mm3": 52.0}
    assert summary["by_host"]["liver"]["detected"] == 2 and summary["by_host"]["right_kidney"]["detected"] == 1
    assert summary["by_size"]["< 100 mm3"]["lesions"] == 4 and summary["by_size"][">= 1000 mm3"]["lesions"] == 0
    assert summary["false"] == {"lesions": 2, "volume_mm3": 9.0,
                                "by_location": {"spleen": {"lesions": 1, "volume_mm3": 8.0},
                                                "background": {"lesions": 1, "volume_mm3": 1.0}}}


def test_shape_mismatch_names_the_case():
    with pytest.raises(ValueError, match="case x: shapes differ"):
        case_lesions("x", np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8), SPACING)


def test_cli_lesions_option_writes_the_table_and_summary(tmp_path, capsys):
    gt, pred = planted_case()
    geometry = Geometry(gt.shape, SPACING)
    for folder, array in (("gt", gt), ("pred", pred)):
        (tmp_path / folder).mkdir()
        write_labels(tmp_path / folder / "case_a.nii.gz", array, geometry)
    out = tmp_path / "out"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out),
                 "--no-progress", "--lesions"]) == 0
    with open(out / "lesions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["kind"], int(r["host"]), float(r["volume_mm3"])) for r in rows) == [
        ("false", 0, 1.0), ("false", 3, 8.0), ("true", 1, 32.0), ("true", 2, 4.0)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lesions"]["true"]["detected"] == 1
    assert "tumours: 1 of 2 detected (liver 1/1, right_kidney 0/1); 2 false lesion(s), 9 mm3" in capsys.readouterr().out
    # without the option the evaluation stays as before: no lesion table
    out2 = tmp_path / "out2"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out2),
                 "--no-progress"]) == 0
    assert not (out2 / "lesions.csv").exists() and "lesions" not in json.loads((out2 / "summary.json").read_text())
