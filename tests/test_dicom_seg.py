"""DICOM SEG output: coded segments, a voxel-exact round trip through highdicom on series in several
slice orders and patient orientations, clear errors and no file for broken or incomplete series."""
from __future__ import annotations

import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from inference.app.dicom_seg.codes import SEGMENT_CODES
from inference.app.dicom_seg.series import SeriesError, match_slices, read_headers, series_files
from inference.app.dicom_seg.writer import write_dicom_seg
from inference.io.images import InputError, geometry_of, read_ct, read_image, write_labels
from phantom import make_phantom
from inference.app.volumes import LABEL_NAMES
from tests.dicom_series import write_ct_series

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
LABEL_OF = {name: label for label, name in LABEL_NAMES.items()}
# SNOMED CT concept of each FLARE label (and laterality), as the DICOM standard's CID 7151 lists them
EXPECTED_SCT = {1: "10200004", 2: "64033007", 3: "78961009", 4: "15776009", 5: "15825003", 6: "64131007",
                7: "23451007", 8: "23451007", 9: "28231008", 10: "32849002", 11: "69695003", 12: "38848004",
                13: "64033007", 14: "108369006"}
# ITK orientation codes: LPS is DICOM's usual head-first supine layout, RPI a feet-first one
LAYOUTS = {"head_first": ("LPS", False, "HFS"), "head_first_reversed": ("LPS", True, "HFS"),
           "feet_first": ("RPI", False, "FFS")}


def test_segment_codes_are_snomed_concepts_of_their_context_groups():
    assert set(SEGMENT_CODES) == set(range(1, 15))
    for label, code in SEGMENT_CODES.items():
        assert code.property_type.scheme_designator == "SCT" and code.property_type.value == EXPECTED_SCT[label]
        assert code.category in codes.cid7150  # Segmentation Property Categories
        assert code.property_type in codes.cid7151  # Segmentation Property Types
        assert code.modifier is None or code.modifier in codes.cid244  # Laterality
    assert SEGMENT_CODES[2].modifier == codes.SCT.Right and SEGMENT_CODES[13].modifier == codes.SCT.Left
    assert SEGMENT_CODES[7].modifier == codes.SCT.Right and SEGMENT_CODES[8].modifier == codes.SCT.Left
    assert SEGMENT_CODES[14].category == codes.SCT.MorphologicallyAbnormalStructure


def _case(source: str):
    """(image, labels) SimpleITK images: the real CT with its reference labels, or a phantom with tumours."""
    if source == "real":
        if not (REAL / "TS_example_ct_0000.nii.gz").exists():
            pytest.skip("../shared/data/real not present")
        return (sitk.ReadImage(str(REAL / "TS_example_ct_0000.nii.gz")),
                sitk.ReadImage(str(REAL / "labels" / "TS_example_ct.nii.gz")))
    phantom = make_phantom(5, shape=(24, 64, 72), spacing=(3.0, 1.5, 1.5), tumor_probability=1.0)
    from inference.io.images import to_sitk
    return to_sitk(phantom.image.astype(np.int16), phantom.geometry), to_sitk(phantom.labels, phantom.geometry)


def _read_back(seg_path: Path, series: Path, geometry) -> np.ndarray:
    """The SEG as a FLARE label map on the series' array grid, read by highdicom; any warning fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pydicom.dcmread(seg_path)
        seg = hd.seg.segread(seg_path)
        files = series_files(series)
        uids = [h.SOPInstanceUID for h in match_slices(files, read_headers(files), geometry)]
        numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    labels = np.zeros(256, np.uint8)
    for segment in seg.SegmentSequence:
        if segment.SegmentNumber:  # a label map SEG describes its background as segment 0
            labels[segment.SegmentNumber] = LABEL_OF[segment.SegmentLabel]
    return labels[numbers]


@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("source", ["real", "phantom"])
def test_seg_equals_the_nifti_label_map_voxel_for_voxel(tmp_path, source, layout, labelmap):
    orientation, descending, position = LAYOUTS[layout]
    image, labels = (sitk.DICOMOrient(i, orientation) for i in _case(source))
    series = tmp_path / "series"
    write_ct_series(series, sitk.GetArrayFromImage(image), geometry_of(image), descending=descending,
                    patient_position=position)
    volume, geometry = read_ct(series)  # as the engine reads the series
    assert np.array_equal(volume, sitk.GetArrayFromImage(image))
    expected = geometry_of(image)
    assert (geometry.shape, geometry.direction) == (expected.shape, expected.direction)
    np.testing.assert_allclose(geometry.spacing + geometry.origin, expected.spacing + expected.origin, atol=1e-5)
    label_map = sitk.GetArrayFromImage(labels).astype(np.uint8)
    write_labels(tmp_path / "labels.nii.gz", label_map, geometry)
    write_dicom_seg(tmp_path / "labels.seg.dcm", label_map, geometry, series, labelmap=labelmap)
    nifti, nifti_geometry = read_image(tmp_path / "labels.nii.gz")
    assert np.array_equal(_read_back(tmp_path / "labels.seg.dcm", series, geometry), nifti.astype(np.uint8))
    seg = pydicom.dcmread(tmp_path / "labels.seg.dcm")
    assert seg.SegmentationType == ("LABELMAP" if labelmap else "BINARY")
    present = sorted(int(v) for v in np.unique(label_map) if v)
    assert [LABEL_OF[s.SegmentLabel] for s in seg.SegmentSequence if s.SegmentNumber] == present
    first = pydicom.dcmread(series_files(series)[0], stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID and seg.StudyInstanceUID == first.StudyInstanceUID
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series_files(series)}


def _small_series(folder: Path) -> tuple[Path, np.ndarray]:
    image, labels = _case("phantom")
    write_ct_series(folder, sitk.GetArrayFromImage(image), geometry_of(image))
    return folder, sitk.GetArrayFromImage(labels).astype(np.uint8)


def test_incomplete_series_is_an_input_error(tmp_path):
    series, _ = _small_series(tmp_path / "series")
    sorted(series.iterdir())[10].unlink()  # an instance lost in transfer
    with pytest.raises(InputError, match="cannot be placed on a regular grid: missing slice"):
        read_ct(series)


def test_truncated_instance_is_an_input_error(tmp_path):
    series, _ = _small_series(tmp_path / "series")
    victim = sorted(series.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:-3000])
    with pytest.raises(InputError, match=str(series)):
        read_ct(series)


def test_series_that_does_not_tile_the_grid_writes_nothing(tmp_path):
    series, labels = _small_series(tmp_path / "series")
    volume, geometry = read_ct(series)
    shifted = geometry.cropped((1, 0, 0)).with_shape(geometry.shape)  # the grid one slice off the instances
    with pytest.raises(SeriesError, match="lies on no slice"):
        write_dicom_seg(tmp_path / "out.seg.dcm", labels, shifted, series)
    duplicate = sorted(series.iterdir())[3]
    (series / "copy.dcm").write_bytes(duplicate.read_bytes())
    files = sorted(series.iterdir())
    with pytest.raises(SeriesError, match="a second instance on slice"):
        match_slices(files, read_headers(files), geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no partial SEG left
