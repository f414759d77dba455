"""DICOM folders as study exports hold them: the CT volume is chosen by explicit rules, named in the
run report, overridable, one case per series on request; irregular slice stacks are refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from inference.app.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from inference.io.ct_input import read_ct_scan
from inference.io.dicom_series import choose_series, list_series, series_cases, stack_problems
from inference.io.images import InputError, discover_cases
from tests.dicom_factory import CORONAL, SAGITTAL, UID_ROOT, tilted, write_series
from tests.factories import make_model_folder


def anatomy(slices=12, seed=0) -> np.ndarray:
    """int16 HU slices: air around a soft-tissue body with fat and a bone, noise, like a CT slice."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:slices, 0:40, 0:48]
    body = ((y - 20) / 16) ** 2 + ((x - 24) / 20) ** 2 < 1
    volume = np.where(body, 40, -1000) + rng.normal(0, 12, (slices, 40, 48))
    volume[body & (((y - 20) / 16) ** 2 + ((x - 24) / 20) ** 2 > 0.7)] = -100  # subcutaneous fat
    volume[:, 28:32, 22:26] = 700  # a vertebra
    return np.round(volume).astype(np.int16)


def uid(number: int) -> str:
    return f"{UID_ROOT}.{number}"


# folder name -> (writer, the series number that must be chosen)
def localizer_and_two_reconstructions(folder):
    write_series(folder, anatomy(1), number=1, image_type="ORIGINAL\\PRIMARY\\LOCALIZER", orientation=SAGITTAL)
    write_series(folder, anatomy(12), number=2, description="abdomen 3 mm")
    write_series(folder, anatomy(6, seed=1), number=3, spacing=(6.0, 3.0, 3.0), description="bone 6 mm")


def ct_beside_a_larger_mr(folder):
    write_series(folder, anatomy(20, seed=2), number=5, modality="MR")
    write_series(folder, anatomy(12), number=6)


def axial_beside_a_larger_coronal_reformat(folder):
    write_series(folder, anatomy(30, seed=3), number=7, orientation=CORONAL, image_type="DERIVED\\SECONDARY\\REFORMATTED")
    write_series(folder, anatomy(12), number=8)


def regular_beside_a_larger_series_with_a_gap(folder):
    write_series(folder, anatomy(20, seed=4), number=9, drop=(10,))
    write_series(folder, anatomy(12), number=10)


FOLDERS = {"localizer": (localizer_and_two_reconstructions, 2), "mr": (ct_beside_a_larger_mr, 6),
           "coronal": (axial_beside_a_larger_coronal_reformat, 8), "gap": (regular_beside_a_larger_series_with_a_gap, 10)}


@pytest.mark.parametrize("name", FOLDERS)
def test_the_ct_volume_is_chosen_by_the_rules(tmp_path, name):
    make, number = FOLDERS[name]
    make(tmp_path / name)
    array, geometry, info = read_ct_scan(tmp_path / name)
    chosen = info["dicom_series"]["chosen"]
    assert chosen["uid"] == uid(number) and chosen["modality"] == "CT" and chosen["axial"]
    np.testing.assert_array_equal(array, anatomy(12).astype(np.float32))
    assert geometry.spacing == pytest.approx((3.0, 3.0, 3.0))
    passed_over = {s["uid"]: s["passed_over"] for s in info["dicom_series"]["series"]}
    assert passed_over.pop(uid(number)) is None and all(passed_over.values())


def test_the_reasons_for_passing_over_a_series(tmp_path):
    localizer_and_two_reconstructions(tmp_path)
    _, report = choose_series(list_series(tmp_path))
    reasons = {s["number"]: s["passed_over"] for s in report["series"]}
    assert reasons[1] == "not a volume (not a LOCALIZER, at least 2 slices or frames)"
    assert reasons[3] == f"fewer slices than {uid(2)}"


@pytest.mark.parametrize("make, problem", [
    (lambda d: write_series(d, anatomy(12), number=11, drop=(5,)), "missing slice(s): a gap of 6.00 mm (about 1 slice(s)) after slice 4"),
    (lambda d: write_series(d, anatomy(12), number=12, drop=(5, 6)), "a gap of 9.00 mm (about 2 slice(s))"),
    (lambda d: write_series(d, anatomy(6), number=13, positions=[(0, 0, z) for z in (0, 3, 6.5, 9.5, 13, 16)]),
     "uneven slice spacing: steps from 3.000 to 3.500 mm"),
    (lambda d: write_series(d, anatomy(12), number=14, orientation=tilted(15), positions=[(0, 0, 3.0 * z) for z in range(12)]),
     "gantry tilt of 15.0 degrees"),
    (lambda d: write_series(d, anatomy(4), number=15, positions=[(0, 0, z) for z in (0, 3, 3, 6)]), "two slices at the same position"),
])
def test_irregular_stacks_are_refused_with_the_geometry_stated(tmp_path, make, problem):
    make(tmp_path / "scan")
    with pytest.raises(InputError, match="cannot be placed on a regular grid") as info:
        read_ct_scan(tmp_path / "scan")
    assert problem in str(info.value) and str(tmp_path / "scan") in str(info.value)


def test_a_regular_stack_in_any_order_and_orientation_has_no_problems(tmp_path):
    write_series(tmp_path / "a", anatomy(8), number=16, orientation=tilted(0.2))  # rounding, not tilt
    write_series(tmp_path / "b", anatomy(8), number=17, orientation=CORONAL)
    for folder in ("a", "b"):
        (series,) = list_series(tmp_path / folder)
        assert stack_problems(series) == []


def test_series_override_and_unknown_uid(tmp_path):
    localizer_and_two_reconstructions(tmp_path)
    array, geometry, info = read_ct_scan(tmp_path, series_uid=uid(3))
    assert info["dicom_series"]["rule"] == "--series" and array.shape == (6, 40, 48)
    assert geometry.spacing[0] == pytest.approx(6.0)
    with pytest.raises(InputError, match=r"no series 1\.2\.3 here; series: .*\.1, .*\.2, .*\.3"):
        read_ct_scan(tmp_path, series_uid="1.2.3")


def test_each_series_makes_one_case_per_ct_volume(tmp_path):
    study = tmp_path / "study"
    localizer_and_two_reconstructions(study)
    ct_beside_a_larger_mr(tmp_path / "other")
    cases = series_cases(discover_cases(tmp_path), each_series=True)
    assert [(c.case_id, c.series_uid) for c in cases] == [("other_s6", uid(6)), ("study_s2", uid(2)),
                                                          ("study_s3", uid(3))]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model") / "m", labels={"background": 0, "liver": 1},
                             spacing=(3.0, 3.0, 3.0), seed=2, bias_class=1)


def test_cli_names_the_chosen_series_and_runs_each_series(tmp_path, model):
    inputs = tmp_path / "in"
    for name, (make, _) in FOLDERS.items():
        make(inputs / name)
    write_series(inputs / "tilted", anatomy(12), number=20, orientation=tilted(10), positions=[(0, 0, 3.0 * z) for z in range(12)])
    code = main(["-i", str(inputs), "-o", str(tmp_path / "out"), "--model", str(model), "--no-progress"])
    assert code == EXIT_SOME_FAILED  # the tilted series only
    report = {c["case_id"]: c for c in json.loads((tmp_path / "out" / "run_report.json").read_text())["cases"]}
    for name, (_, number) in FOLDERS.items():
        assert report[name]["status"] == "ok" and report[name]["input_info"]["dicom_series"]["chosen"]["uid"] == uid(number)
    assert report["tilted"]["status"] == "failed" and "gantry tilt of 10.0 degrees" in report["tilted"]["error"]
    assert not (tmp_path / "out" / "tilted.nii.gz").exists()
    code = main(["-i", str(inputs / "localizer"), "-o", str(tmp_path / "each"), "--model", str(model), "--no-progress",
                 "--each-series"])
    assert code == EXIT_OK
    assert sorted(p.name for p in (tmp_path / "each").glob("*.nii.gz")) == ["localizer_s2.nii.gz", "localizer_s3.nii.gz"]
    assert main(["-i", str(inputs), "-o", str(tmp_path / "x"), "--series", "1.2", "--each-series"]) == EXIT_USAGE
