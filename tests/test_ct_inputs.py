"""What counts as CT: every CT variant of the real CT reads as its HU twin and segments the same;
images that are not CT (0..1, MR-like, z-scored, DICOM Modality MR) are refused unless --assume-ct."""
from __future__ import annotations

import dataclasses

import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from inference.app.cli import EXIT_OK, EXIT_SOME_FAILED, main
from inference.io.ct_check import NotCTError, classify_ct, hu_profile
from inference.io.ct_input import read_ct_scan
from inference.io.images import InputError, read_image, to_sitk
from tests.dicom_factory import write_series
from tests.factories import make_model_folder

REAL_CT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real" / "TS_example_ct_0000.nii.gz"
pytestmark = pytest.mark.skipif(not REAL_CT.is_file(), reason="../shared/data/real not present")
SLAB = np.s_[40:56, ::2, ::2]  # 16 slices through liver, kidneys and spleen, every 2nd row/column: fast
LABELS = {"background": 0, "liver": 1, "spleen": 3}


@pytest.fixture(scope="module")
def real():
    """The real CT as int16 HU, floored at -1024 (a scanner's stored values are never negative)."""
    array, geometry = read_image(REAL_CT)
    return np.maximum(array, -1024).astype(np.int16), geometry


def mr_like(hu: np.ndarray, fat=900.0, water=350.0, seed=0) -> np.ndarray:
    """A T1-like MR image of the same anatomy: air dark, fat bright, water and tissue grey, bone dark."""
    levels = np.interp(hu, [-1024, -900, -200, -100, -30, 0, 100, 300, 1000, 3100],
                       [0, 10, 0.8 * fat, fat, 0.7 * fat, water, 1.3 * water, 1.4 * water, 150, 100])
    noise = np.random.default_rng(seed).normal(0, 8, hu.shape)
    return np.clip(levels + noise, 0, None).astype(np.float32)


def write_nifti_with_rescale(path: Path, stored: np.ndarray, geometry, slope: float, intercept: float) -> Path:
    """int16 NIfTI whose header scl_slope/scl_inter turn `stored` into HU (SimpleITK writes 1 and 0)."""
    sitk.WriteImage(to_sitk(stored.astype(np.int16), geometry), str(path))
    data = bytearray(path.read_bytes())
    data[112:120] = struct.pack("<ff", slope, intercept)  # NIfTI-1 scl_slope, scl_inter
    path.write_bytes(bytes(data))
    return path


# name -> writer(folder, hu, geometry) returning the path of a CT stored another way
CT_VARIANTS = {
    "hu": lambda d, hu, g: write(d / "hu_0000.nii.gz", hu, g),
    "float_hu": lambda d, hu, g: write(d / "float_hu_0000.mha", hu.astype(np.float32), g),
    "no_intercept": lambda d, hu, g: write(d / "no_intercept_0000.nii.gz", (hu.astype(np.int32) + 1024).astype(np.uint16), g),
    "slope_intercept": lambda d, hu, g: write_nifti_with_rescale(d / "slope_intercept_0000.nii", (hu.astype(np.int32) + 1024) * 2,
                                                                 g, 0.5, -1024.0),
    "dicom_rescale": lambda d, hu, g: dicom(d / "dicom_rescale", hu, g, rescale=(1.0, -1024.0)),
    "dicom_slope": lambda d, hu, g: dicom(d / "dicom_slope", hu.astype(np.float32), g, rescale=(0.5, -1024.0)),
    "dicom_no_intercept": lambda d, hu, g: dicom(d / "dicom_no_intercept", (hu.astype(np.int32) + 1024).astype(np.uint16),
                                                 g, rescale=(1.0, 0.0)),
}
NOT_CT = {  # name -> (writer, what the error must say)
    "unit_range": (lambda d, hu, g: write(d / "unit_range_0000.nii.gz", ((hu - hu.min()) / np.ptp(hu)).astype(np.float32), g),
                   "values 0..1"),
    "mr_t1": (lambda d, hu, g: write(d / "mr_t1_0000.nii.gz", mr_like(hu).astype(np.uint16), g), "-200..300 HU"),
    "mr_t1_bright": (lambda d, hu, g: write(d / "mr_t1_bright_0000.nii.gz", mr_like(hu, fat=2200, water=1000).astype(np.uint16), g),
                     "-200..300 HU"),
    "z_scored": (lambda d, hu, g: write(d / "z_scored_0000.nii.gz", ((hu - hu.mean()) / hu.std()).astype(np.float32), g),
                 "spread over"),
    "dicom_mr": (lambda d, hu, g: dicom(d / "dicom_mr", hu, g, modality="MR"), "Modality is MR"),
}


def write(path: Path, array: np.ndarray, geometry) -> Path:
    sitk.WriteImage(to_sitk(array, geometry), str(path))
    return path


def dicom(folder: Path, slices: np.ndarray, geometry, **tags) -> Path:
    """A DICOM series with `geometry` (the NIfTI twin's), so both are segmented alike."""
    d = geometry.direction
    positions = [tuple(geometry.index_to_physical((z, 0, 0))) for z in range(slices.shape[0])]
    write_series(folder, slices, number=1, spacing=geometry.spacing, orientation=(d[0], d[3], d[6], d[1], d[4], d[7]),
                 positions=positions, **tags)
    return folder


@pytest.fixture(scope="module")
def slab(real):
    hu, geometry = real
    # The slab is labelled on a coarser in-plane grid (6 mm) so that its cascade runs fast; origin and
    # direction stay the scan's.
    return hu[SLAB], dataclasses.replace(geometry, shape=hu[SLAB].shape, spacing=(3.0, 6.0, 6.0))


# ----------------------------------------------------------------------------- the classifier

def test_the_real_ct_and_its_slabs_are_ct_in_hu(real):
    hu, _ = real
    for part in (hu, hu[82:], hu[:40], hu[SLAB]):  # whole, upper abdomen, pelvis, the test slab
        verdict = classify_ct(part)
        assert (verdict.kind, verdict.offset) == ("hu", 0.0)
    profile = hu_profile(hu.ravel(), 0.0)
    assert profile.soft_tissue > 0.85 and profile.bone < 0.05 and not profile.failures()


def test_dicom_modality_decides_before_the_values(real):
    hu, _ = real
    with pytest.raises(NotCTError, match="Modality is PT"):
        classify_ct(hu, {"modality": "PT"})
    assert classify_ct(hu, {"modality": "OT"}).kind == "hu"  # "other": the values decide
    tiny = np.full((4, 4, 4), 40.0, np.float32)  # too little to judge, but the header says CT
    assert classify_ct(tiny, {"modality": "CT"}).offset == -1024.0
    assert classify_ct(tiny, {"modality": "CT", "rescale_intercept": -1024.0}).offset == 0.0  # the header made it HU
    with pytest.raises(NotCTError, match="spread over 0 units"):
        classify_ct(tiny)
    air = np.full((4, 4, 4), -1000.0, np.float32)  # HU's own value for air: CT with nothing to segment
    assert (classify_ct(air).kind, classify_ct(air).offset) == ("hu", 0.0)
    with pytest.raises(NotCTError, match="spread over 0 units"):  # stored air (24) is no evidence of CT
        classify_ct(air + 1024)


@pytest.mark.parametrize("name", CT_VARIANTS)
def test_every_ct_variant_reads_as_its_hu_twin(tmp_path, slab, name, caplog):
    hu, geometry = slab
    with caplog.at_level(logging.WARNING):
        array, read_geometry, info = read_ct_scan(CT_VARIANTS[name](tmp_path, hu, geometry))
    np.testing.assert_array_equal(array, hu.astype(np.float32))
    assert read_geometry.shape == hu.shape
    assert info["ct"]["kind"] == ("unshifted" if "no_intercept" in name else "hu")
    shifted = [r.getMessage() for r in caplog.records if "shifted by -1024" in r.getMessage()]
    assert len(shifted) == ("no_intercept" in name)


@pytest.mark.parametrize("name", NOT_CT)
def test_non_ct_is_refused_naming_what_was_seen(tmp_path, slab, name):
    hu, geometry = slab
    make, cause = NOT_CT[name]
    path = make(tmp_path, hu, geometry)
    with pytest.raises(InputError, match="not CT") as info:
        read_ct_scan(path)
    assert cause in str(info.value) and str(path) in str(info.value) and "--assume-ct" in str(info.value)
    array, _, read_info = read_ct_scan(path, assume_ct=True)
    assert read_info["ct"]["kind"] == "assumed" and array.shape == hu.shape


# ------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small random model at the slab's spacing, so it needs no resampling."""
    return make_model_folder(tmp_path_factory.mktemp("model") / "m", labels=LABELS, spacing=(3.0, 6.0, 6.0),
                             seed=1, bias_class=1)


def test_batch_segments_every_ct_variant_like_its_twin_and_refuses_the_rest(tmp_path, slab, model):
    hu, geometry = slab
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for make in CT_VARIANTS.values():
        make(inputs, hu, geometry)
    for make, _ in NOT_CT.values():
        make(inputs, hu, geometry)
    assert main(["-i", str(inputs), "-o", str(outputs), "--model", str(model), "--no-progress"]) == EXIT_SOME_FAILED
    report = {c["case_id"]: c for c in json.loads((outputs / "run_report.json").read_text())["cases"]}
    reference = read_image(outputs / "hu.nii.gz")[0]
    assert len(np.unique(reference)) > 1
    for name in CT_VARIANTS:
        assert report[name]["status"] == "ok", report[name]["error"]
        np.testing.assert_array_equal(read_image(outputs / f"{name}.nii.gz")[0], reference)
    for name, (_, cause) in NOT_CT.items():
        assert report[name]["status"] == "failed" and "not CT" in report[name]["error"] and cause in report[name]["error"]
        assert not (outputs / f"{name}.nii.gz").exists()
    assert report["no_intercept"]["input_info"]["ct"]["kind"] == "unshifted"
    # --assume-ct: every one is segmented
    assert main(["-i", str(inputs), "-o", str(tmp_path / "forced"), "--model", str(model), "--no-progress",
                 "--assume-ct"]) == EXIT_OK
    forced = json.loads((tmp_path / "forced" / "run_report.json").read_text())
    assert forced["options"]["assume_ct"] is True
    assert {c["case_id"] for c in forced["cases"] if c["input_info"]["ct"]["kind"] == "assumed"} == set(NOT_CT)
