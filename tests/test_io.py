"""Reading every supported format with its exact geometry, atomic writes, case discovery, bad inputs."""
import gzip
import os

import numpy as np
import pytest
import SimpleITK as sitk

from inference.core.geometry import Geometry, GeometryError
from inference.io.images import (InputError, case_id_from_name, discover_cases, read_image, remove_stale_partials,
                          to_sitk, write_labels)

GEOMETRY = Geometry((5, 6, 7), (2.5, 0.8, 0.7), (-10.0, 20.5, 33.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))


def volume():
    return np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) - 100


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_round_trip_keeps_values_and_geometry(tmp_path, suffix):
    path = tmp_path / f"case_0000{suffix}"
    sitk.WriteImage(to_sitk(volume(), GEOMETRY), str(path))
    array, geometry = read_image(path)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, volume())
    assert geometry.shape == GEOMETRY.shape
    np.testing.assert_allclose(geometry.spacing, GEOMETRY.spacing, rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, GEOMETRY.origin, atol=1e-4)
    np.testing.assert_allclose(geometry.direction, GEOMETRY.direction, atol=1e-6)


def test_dicom_series_folder_is_one_case(tmp_path):
    image = to_sitk(volume(), GEOMETRY.with_shape((5, 6, 7)))
    series = tmp_path / "scan"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series UID
        slice_.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        slice_.SetMetaData("0020|0037", "\\".join(map(str, GEOMETRY.direction[0:7:3] + GEOMETRY.direction[1:8:3])))
        slice_.SetMetaData("0020|0013", str(z))
        writer.SetFileName(str(series / f"{z:03d}.dcm"))
        writer.Execute(slice_)
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["scan"]
    array, geometry = read_image(cases[0].path)
    np.testing.assert_array_equal(array, volume())
    np.testing.assert_allclose(geometry.spacing, GEOMETRY.spacing, rtol=1e-4)


def test_write_labels_is_exact_and_atomic(tmp_path):
    labels = (volume() % 15).astype(np.uint8)
    out = tmp_path / "case.nii.gz"
    write_labels(out, labels, GEOMETRY)
    written = sitk.ReadImage(str(out))
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)
    assert written.GetDirection() == pytest.approx(GEOMETRY.direction)
    assert written.GetOrigin() == pytest.approx(GEOMETRY.origin)
    assert os.listdir(tmp_path) == ["case.nii.gz"]  # no temporary left behind


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_labels(tmp_path / "case.nii.gz", np.zeros((2, 2, 2), np.uint8), GEOMETRY)
    assert os.listdir(tmp_path) == []


def test_stale_partials_are_removed(tmp_path):
    (tmp_path / ".case.partial-123.nii.gz").write_bytes(b"half")
    (tmp_path / "keep.nii.gz").write_bytes(b"x")
    removed = remove_stale_partials(tmp_path)
    assert [p.name for p in removed] == [".case.partial-123.nii.gz"]
    assert os.listdir(tmp_path) == ["keep.nii.gz"]


def test_case_naming_follows_flare():
    assert case_id_from_name("FLARE23_0001_0000.nii.gz") == "FLARE23_0001"
    assert case_id_from_name("scan.mha") == "scan"
    assert case_id_from_name("a_0000.nrrd") == "a"
    assert case_id_from_name("notes.txt") == "notes"


def test_discovery_keeps_unknown_files_to_report_them(tmp_path):
    for name in ["b_0000.nii.gz", "a_0000.nii.gz", "notes.txt", ".hidden.nii.gz", ".x.partial-1.nii.gz"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty_dir").mkdir()
    assert [c.path.name for c in discover_cases(tmp_path)] == ["a_0000.nii.gz", "b_0000.nii.gz", "notes.txt"]
    with pytest.raises(FileNotFoundError):
        discover_cases(tmp_path / "missing")


def write(path, image):
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("make,cause", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"this is not an image at all"), "not a readable image"),
    (lambda p: p.write_bytes(gzip.compress(b"x" * 100)[:30]), "not a readable image"),
])
def test_unreadable_files_name_the_cause(tmp_path, make, cause):
    path = tmp_path / "bad_0000.nii.gz"
    make(path)
    with pytest.raises(InputError, match=cause) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_unknown_extension(tmp_path):
    path = tmp_path / "scan.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match="unknown extension"):
        read_image(path)


def test_2d_4d_and_vector_images_are_rejected(tmp_path):
    with pytest.raises(InputError, match="2D image"):
        read_image(write(tmp_path / "a.nii.gz", sitk.GetImageFromArray(np.zeros((4, 4), np.int16))))
    with pytest.raises(InputError, match="4D image"):
        read_image(write(tmp_path / "b.nii.gz", sitk.Image([3, 3, 3, 2], sitk.sitkInt16)))
    vector = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.float32), isVector=True)
    with pytest.raises(InputError, match="vector pixel type"):
        read_image(write(tmp_path / "c.mha", vector))


def test_non_finite_voxels_are_rejected(tmp_path):
    data = np.zeros((3, 4, 5), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="2 non-finite"):
        read_image(write(tmp_path / "nan.mha", sitk.GetImageFromArray(data)))  # ITK zeroes NaN in NIfTI


def test_zero_spacing_is_rejected(tmp_path):
    path = write(tmp_path / "z.mha", sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)))
    path.write_bytes(path.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 0 1 1"))
    with pytest.raises(InputError, match="[Zz]ero-valued spacing|spacing"):
        read_image(path)


def test_geometry_validation():
    with pytest.raises(GeometryError, match="spacing"):
        Geometry((1, 2, 3), (1.0, -1.0, 1.0))
    with pytest.raises(GeometryError, match="spacing"):
        Geometry((1, 2, 3), (1.0, float("nan"), 1.0))
    with pytest.raises(GeometryError, match="orthonormal"):
        Geometry((1, 2, 3), (1.0, 1.0, 1.0), direction=(1, 0, 0, 0.5, 1, 0, 0, 0, 1))
    oblique = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    Geometry((1, 2, 3), (1.0, 1.0, 1.0), direction=tuple(oblique.ravel()))  # oblique but orthonormal: fine


def test_physical_mapping_and_cranial_sign():
    assert GEOMETRY.cranial_sign() == 1.0
    feet_first = Geometry((5, 6, 7), (2.5, 0.8, 0.7), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, -1))
    assert feet_first.cranial_sign() == -1.0
    point = GEOMETRY.index_to_physical((1, 2, 3))
    image = to_sitk(volume(), GEOMETRY)
    np.testing.assert_allclose(point, image.TransformContinuousIndexToPhysicalPoint((3, 2, 1)))
