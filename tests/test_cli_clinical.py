"""The command line's clinical outputs: quality flags (--qa), DICOM SEG (--output-format)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from inference.app.cli import EXIT_OK, EXIT_SOME_FAILED, main
from inference.core.geometry import Geometry
from inference.io.images import read_image, to_sitk
from inference.app.outputs import NOT_DICOM_NOTE
from phantom import make_phantom
from tests.dicom_series import write_ct_series
from tests.factories import make_model_folder

LABELS = {"background": 0, "liver": 1, "spleen": 3}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model") / "m", labels=LABELS, bias_class=0)


@pytest.fixture(scope="module")
def liver_model(tmp_path_factory):
    """Mostly liver, some spleen: a SEG with segments to read back."""
    return make_model_folder(tmp_path_factory.mktemp("model") / "liver", labels=LABELS, bias_class=1)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, shape=(20, 48, 48), spacing=(4.0, 2.0, 2.0))


def run(*args):
    return main([str(a) for a in args] + ["--no-progress"])


def test_quality_flags_reported_and_strict_fails_flagged_cases(tmp_path, model, phantom, caplog):
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(to_sitk(phantom.image.astype(np.int16), phantom.geometry), str(inputs / "A_0000.nii.gz"))
    blank = np.full((10, 32, 32), -1000, np.int16)  # air only: nothing to segment, nothing to flag
    sitk.WriteImage(to_sitk(blank, Geometry(blank.shape, (2.0, 2.0, 2.0))), str(inputs / "B_0000.nii.gz"))
    with caplog.at_level(logging.WARNING):
        assert run("-i", inputs, "-o", tmp_path / "report", "--model", model, "--volumes") == EXIT_OK
    report = json.loads((tmp_path / "report" / "run_report.json").read_text())
    quality = {c["case_id"]: c["quality"] for c in report["cases"]}
    assert quality["A"]["flagged"] and not quality["B"]["flagged"]  # a random network's labels are implausible
    assert report["summary"]["quality_flagged"] == 1 and report["options"]["qa"] == "report"
    flag = quality["A"]["flags"][0]
    assert {"rule", "subject", "value", "unit", "reference", "message"} <= set(flag)
    assert [r.message for r in caplog.records if "QUALITY" in r.message] == [
        f"QUALITY A: {len(quality['A']['flags'])} quality flag(s): " + "; ".join(f["message"] for f in quality["A"]["flags"])]
    assert json.loads((tmp_path / "report" / "A_volumes.json").read_text())["quality"] == quality["A"]
    assert "quality_flag" in (tmp_path / "report" / "volumes.csv").read_text()

    assert run("-i", inputs, "-o", tmp_path / "strict", "--model", model, "--qa", "strict") == EXIT_SOME_FAILED
    strict = {c["case_id"]: c for c in json.loads((tmp_path / "strict" / "run_report.json").read_text())["cases"]}
    assert strict["A"]["status"] == "failed" and strict["A"]["error"].startswith("quality check (--qa strict)")
    assert strict["B"]["status"] == "ok"
    assert run("-i", inputs, "-o", tmp_path / "off", "--model", model, "--qa", "off") == EXIT_OK
    assert all(c["quality"] is None for c in json.loads((tmp_path / "off" / "run_report.json").read_text())["cases"])


def test_dicom_seg_beside_or_instead_of_nifti(tmp_path, liver_model, phantom):
    model = liver_model
    series = tmp_path / "in" / "CASE1"
    write_ct_series(series, phantom.image, phantom.geometry, descending=True)
    both = tmp_path / "both"
    assert run("-i", tmp_path / "in", "-o", both, "--model", model, "--output-format", "nifti,dicom-seg") == EXIT_OK
    case = json.loads((both / "run_report.json").read_text())["cases"][0]
    assert case["outputs"] == {"nifti": str(both / "CASE1.nii.gz"), "dicom-seg": str(both / "CASE1.seg.dcm")}
    nifti = read_image(both / "CASE1.nii.gz")[0].astype(np.uint8)
    seg = pydicom.dcmread(both / "CASE1.seg.dcm")
    assert seg.Modality == "SEG" and int(seg.NumberOfFrames) >= 1
    segments = {s.SegmentLabel for s in seg.SegmentSequence}
    assert "liver" in segments and segments == {name for name, value in LABELS.items() if value and (nifti == value).any()}
    only = tmp_path / "only"
    assert run("-i", series, "-o", only, "--model", model, "--output-format", "dicom-seg-labelmap") == EXIT_OK
    assert sorted(p.name for p in only.iterdir()) == ["CASE1.seg.dcm", "run_report.json"]
    assert pydicom.dcmread(only / "CASE1.seg.dcm").SegmentationType == "LABELMAP"


def test_dicom_seg_for_a_nifti_input_keeps_nifti_and_says_so(tmp_path, model, phantom):
    path = tmp_path / "A_0000.nii.gz"
    sitk.WriteImage(to_sitk(phantom.image.astype(np.int16), phantom.geometry), str(path))
    assert run("-i", path, "-o", tmp_path / "out", "--model", model, "--output-format", "dicom-seg") == EXIT_OK
    case = json.loads((tmp_path / "out" / "run_report.json").read_text())["cases"][0]
    assert case["outputs"] == {"nifti": str(tmp_path / "out" / "A.nii.gz")} and case["output_note"] == NOT_DICOM_NOTE


def test_incomplete_series_fails_alone_and_leaves_no_file(tmp_path, model, phantom):
    inputs = tmp_path / "in"
    write_ct_series(inputs / "GOOD", phantom.image, phantom.geometry)
    write_ct_series(inputs / "GAP", phantom.image, phantom.geometry)
    sorted((inputs / "GAP").iterdir())[7].unlink()
    out = tmp_path / "out"
    assert run("-i", inputs, "-o", out, "--model", model, "--output-format", "nifti,dicom-seg") == EXIT_SOME_FAILED
    cases = {c["case_id"]: c for c in json.loads((out / "run_report.json").read_text())["cases"]}
    assert "missing slice" in cases["GAP"]["error"] and cases["GOOD"]["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == ["GOOD.nii.gz", "GOOD.seg.dcm", "run_report.json"]


@pytest.mark.parametrize("value", ["dicom", "nifti,nifti", "", "dicom-seg,dicom-seg-labelmap"])
def test_bad_output_format_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", "x", "-o", "y", "--output-format", value])
    assert exit_info.value.code == 2 and "output format must be" in capsys.readouterr().err
