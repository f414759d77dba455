"""`python -m evaluation`: pairing, CSV/JSON outputs equal to a recomputation, clear failures."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.cli import EvaluationError, evaluate_folders, main
from evaluation.metrics import evaluate_case
from inference.core.labels import ALL_LABELS, ORGAN_LABELS
from inference.core.geometry import Geometry
from inference.io.images import read_image, write_labels

REPO = Path(__file__).resolve().parents[1]
GEOMETRY = Geometry((12, 16, 16), (2.0, 0.8, 0.9))


def synthetic_pair(seed):
    """A GT with a few boxes and a perturbed prediction (shifted boxes, a missed and an extra label)."""
    rng = np.random.default_rng(seed)
    gt, pred = np.zeros(GEOMETRY.shape, np.uint8), np.zeros(GEOMETRY.shape, np.uint8)
    for label in (1, 2, 5, 14):
        z, y, x = rng.integers(1, 6), rng.integers(1, 9), rng.integers(1, 9)
        gt[z:z + 5, y:y + 6, x:x + 6] = label
        dz, dy, dx = rng.integers(-1, 2, 3)
        pred[z + dz:z + dz + 5, y + dy:y + dy + 6, x + dx:x + dx + 6] = label
    pred[pred == 2] = 0 if seed == 1 else 2  # case 1 misses label 2
    pred[0, 0, 0] = 11  # a false-positive stomach voxel everywhere
    return gt, pred


@pytest.fixture()
def folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    arrays = {}
    for seed, case_id in enumerate(["case_a", "case_b", "case_c"]):
        gt, pred = synthetic_pair(seed)
        arrays[case_id] = (gt, pred)
        write_labels(gt_dir / f"{case_id}.nii.gz", gt, GEOMETRY)
        # One prediction carries the image-style suffix: pairing goes by case ID, not file name.
        name = f"{case_id}_0000.nii.gz" if case_id == "case_b" else f"{case_id}.nii.gz"
        write_labels(pred_dir / name, pred, GEOMETRY)
    return gt_dir, pred_dir, tmp_path / "out", arrays


def test_cli_writes_metrics_and_summary(folders):
    gt_dir, pred_dir, out_dir, arrays = folders
    assert main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out_dir), "--no-progress"]) == 0
    with open(out_dir / "metrics.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["case", "label", "dsc", "nsd"]
        rows = list(reader)
    assert [(r["case"], int(r["label"])) for r in rows] == [
        (case_id, label) for case_id in sorted(arrays) for label in ALL_LABELS]
    stored_spacing = read_image(gt_dir / "case_a.nii.gz")[1].spacing  # NIfTI stores float32 spacing
    for case_id, (gt, pred) in arrays.items():
        expected = {s.label: s for s in evaluate_case(gt, pred, stored_spacing)}
        for row in (r for r in rows if r["case"] == case_id):
            assert float(row["dsc"]) == expected[int(row["label"])].dsc
            assert float(row["nsd"]) == expected[int(row["label"])].nsd
    assert {r["label"]: r["dsc"] for r in rows if r["case"] == "case_b"}["2"] == "0.0"  # missed label

    summary = json.loads((out_dir / "summary.json").read_text())
    table = {label: np.array([[float(r["dsc"]), float(r["nsd"])] for r in rows if int(r["label"]) == label])
             for label in ALL_LABELS}
    for label in ALL_LABELS:
        entry = summary["labels"][str(label)]
        assert entry["cases"] == 3
        assert entry["dsc_mean"] == pytest.approx(table[label][:, 0].mean(), abs=1e-12)
        assert entry["dsc_std"] == pytest.approx(table[label][:, 0].std(), abs=1e-12)
        assert entry["nsd_mean"] == pytest.approx(table[label][:, 1].mean(), abs=1e-12)
        assert entry["nsd_std"] == pytest.approx(table[label][:, 1].std(), abs=1e-12)
    assert summary["labels"]["1"]["name"] == "liver"
    assert summary["organ_mean"]["dsc"] == pytest.approx(np.mean([table[l][:, 0].mean() for l in ORGAN_LABELS]))
    assert summary["organ_mean"]["nsd"] == pytest.approx(np.mean([table[l][:, 1].mean() for l in ORGAN_LABELS]))
    assert summary["tumor"]["dsc"] == pytest.approx(table[14][:, 0].mean())
    assert summary["tumor"]["nsd"] == pytest.approx(table[14][:, 1].mean())
    assert summary["labels"]["11"]["dsc_mean"] == 0.0  # false positive on a case without the label


def test_missing_prediction_fails_naming_the_case(folders):
    gt_dir, pred_dir, out_dir, _ = folders
    (pred_dir / "case_c.nii.gz").unlink()
    completed = subprocess.run([sys.executable, "-m", "evaluation", "--pred", str(pred_dir), "--gt", str(gt_dir),
                                "--out", str(out_dir)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0
    assert "missing prediction" in completed.stderr and "case_c" in completed.stderr
    assert not (out_dir / "metrics.csv").exists()


def test_shape_mismatch_fails_naming_the_case(folders, caplog):
    gt_dir, pred_dir, out_dir, _ = folders
    write_labels(pred_dir / "case_a.nii.gz", np.zeros((12, 16, 15), np.uint8), Geometry((12, 16, 15), (2.0, 0.8, 0.9)))
    with pytest.raises(EvaluationError, match=r"shape mismatch.*case_a.*\(12, 16, 15\).*\(12, 16, 16\)"):
        evaluate_folders(pred_dir, gt_dir, out_dir)
    assert main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out_dir), "--no-progress"]) == 1
    assert "case_a" in caplog.text
    assert not (out_dir / "metrics.csv").exists()


def test_non_integer_labels_fail(folders):
    gt_dir, pred_dir, out_dir, _ = folders
    from inference.io.images import to_sitk, write_image_atomic
    write_image_atomic(to_sitk(np.full(GEOMETRY.shape, 0.5, np.float32), GEOMETRY), pred_dir / "case_a.nii.gz")
    with pytest.raises(EvaluationError, match="case_a.*non-integer"):
        evaluate_folders(pred_dir, gt_dir, out_dir)
