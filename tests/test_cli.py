"""The CLI end to end on a small model folder: outputs, geometry, run report, exit codes, bad inputs."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from inference.app.cli import EXIT_FATAL, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from inference.core.geometry import Geometry
from inference.io.images import to_sitk
from inference.core.labels import LABEL_NAMES
from tests.factories import make_model_folder

LABELS = {"background": 0, "liver": 1, "spleen": 3}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model") / "m", labels=LABELS, bias_class=0)


def ct(shape=(10, 40, 36), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(40, 30, shape) - 1000 * (rng.random(shape) < 0.3)).astype(np.int16)


def write_case(folder, name, shape=(10, 40, 36), spacing=(2.5, 1.2, 1.1), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    geometry = Geometry(shape, spacing, (12.0, -40.0, 7.5), direction)
    sitk.WriteImage(to_sitk(ct(shape), geometry), str(folder / name))
    return geometry


def run(*args):
    return main([str(a) for a in args] + ["--no-progress"])


def test_folder_of_cases_with_bad_files_mixed_in(tmp_path, model):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    good = {"A": write_case(inputs, "A_0000.nii.gz"),
            "B": write_case(inputs, "B_0000.mha", shape=(7, 30, 33), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))}
    (inputs / "C_0000.nii.gz").write_bytes(b"not an image")
    (inputs / "D_0000.nii.gz").write_bytes(b"")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 5), np.int16)), str(inputs / "E_0000.nii.gz"))
    before = sorted(os.listdir(inputs))
    code = run("-i", inputs, "-o", outputs, "--model", model)
    assert code == EXIT_SOME_FAILED
    assert sorted(os.listdir(outputs)) == ["A.nii.gz", "B.nii.gz", "run_report.json"]
    assert sorted(os.listdir(inputs)) == before  # nothing is ever written to the input folder
    for case_id, geometry in good.items():
        written = sitk.ReadImage(str(outputs / f"{case_id}.nii.gz"))
        assert written.GetSize() == tuple(reversed(geometry.shape))
        assert written.GetSpacing() == pytest.approx(geometry.spacing_xyz)
        assert written.GetOrigin() == pytest.approx(geometry.origin)
        assert written.GetDirection() == pytest.approx(geometry.direction)
        assert set(np.unique(sitk.GetArrayFromImage(written))) <= set(LABELS.values())
    report = json.loads((outputs / "run_report.json").read_text())
    assert report["summary"] == {**report["summary"], "cases": 5, "ok": 2, "failed": 3}
    by_id = {c["case_id"]: c for c in report["cases"]}
    assert "not a readable image" in by_id["C"]["error"]
    assert "empty file" in by_id["D"]["error"]
    assert "2D image" in by_id["E"]["error"]
    assert {"read", "preprocess", "network", "export", "write", "total"} <= set(by_id["A"]["seconds"])


def test_single_file_and_all_ok_exit_code(tmp_path, model):
    write_case(tmp_path, "scan.nrrd")
    code = run("-i", tmp_path / "scan.nrrd", "-o", tmp_path / "out", "--model", model, "--report", "-",
               "--export", "argmax", "--step-size", "0.8")
    assert code == EXIT_OK
    assert os.listdir(tmp_path / "out") == ["scan.nii.gz"]


def test_fatal_environment_errors_come_before_any_case(tmp_path, model):
    write_case(tmp_path, "A_0000.nii.gz")
    assert run("-i", tmp_path, "-o", tmp_path / "o1", "--model", tmp_path / "no_model") == EXIT_FATAL
    assert not (tmp_path / "o1" / "A.nii.gz").exists()
    not_a_folder = tmp_path / "file_not_folder"
    not_a_folder.write_text("x")
    assert run("-i", tmp_path, "-o", not_a_folder, "--model", model) == EXIT_FATAL
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        if os.access(readonly, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert run("-i", tmp_path, "-o", readonly, "--model", model) == EXIT_FATAL
    finally:
        readonly.chmod(0o700)


def test_usage_errors(tmp_path, model, capsys):
    assert run("-i", tmp_path / "missing", "-o", tmp_path / "out", "--model", model) == EXIT_USAGE
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("-i", empty, "-o", tmp_path / "out", "--model", model) == EXIT_USAGE
    assert main(["--no-progress"]) == EXIT_USAGE
    with pytest.raises(SystemExit) as info:
        main(["-i", "x", "-o", "y", "--step-size", "1.5"])
    assert info.value.code == EXIT_USAGE


def test_stale_partials_are_cleaned_and_rerun_completes(tmp_path, model):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    write_case(inputs, "A_0000.nii.gz")
    (outputs / ".A.partial-999.nii.gz").write_bytes(b"half a file")
    assert run("-i", inputs, "-o", outputs, "--model", model, "--report", "-") == EXIT_OK
    assert os.listdir(outputs) == ["A.nii.gz"]


def test_cascade_folder_runs_and_reports_its_decisions(tmp_path):
    from training.cascade_json_writer import write_cascade_json
    root = tmp_path / "weights"
    make_model_folder(root / "organ", bias_class=0)
    make_model_folder(root / "tumor_liver", labels={"background": 0, "tumor": 1}, bias_class=0)
    write_cascade_json(root, organ_folder="organ", tumor_stages=[{"organ": 1, "folder": "tumor_liver"}])
    write_case(tmp_path, "A_0000.nii.gz")
    assert run("-i", tmp_path / "A_0000.nii.gz", "-o", tmp_path / "out", "--model", root) == EXIT_OK
    case = json.loads((tmp_path / "out" / "run_report.json").read_text())["cases"][0]
    assert {"aorta_found", "contrast_enhanced", "tumor_stages_run", "tumor_stages_skipped"} <= set(case["details"])
    assert "organ_network" in case["seconds"] and "merge" in case["seconds"]


def test_volume_report_and_preview_options(tmp_path, model):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_case(inputs, "A_0000.nii.gz")
    write_case(inputs, "B_0000.nii.gz", direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    out = tmp_path / "out"
    assert run("-i", inputs, "-o", out, "--model", model, "--volumes", "--preview") == EXIT_OK
    for case_id in ("A", "B"):
        volumes = json.loads((out / f"{case_id}_volumes.json").read_text())
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case_id}.nii.gz")))
        spacing = sitk.ReadImage(str(out / f"{case_id}.nii.gz")).GetSpacing()
        assert (out / f"{case_id}_preview.png").stat().st_size > 1000
        for value, name in LABEL_NAMES.items():
            if value <= 13:  # organ volumes in mL agree with the written label map
                expected = (labels == value).sum() * np.prod(spacing) / 1000
                assert volumes["organs_ml"][name] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert (out / "volumes.csv").read_text().splitlines()[0].startswith("case,")
