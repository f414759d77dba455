"""The source instances of a DICOM series, matched one to one with the slices of its array.

SimpleITK (GDCM) reads a series folder by sorting its files along the slice normal; the label
map has that slice order. To reference the source instances, frame i of the segmentation must
be the instance at array slice i. The match is made by geometry, never by file order: each
instance's Image Position (Patient) is projected on the array's slice axis, and every slice
must receive exactly one instance, lying on the slice's plane, with the array's in-plane
orientation, rows and columns. Anything else (a missing or duplicate slice, a tilted or resized
instance, another series) is a SeriesError that names the folder and the cause.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from inference.core.geometry import Geometry

POSITION_TOLERANCE_MM = 0.01  # DICOM decimal strings carry positions to about 1e-4 mm
ORIENTATION_TOLERANCE = 1e-4


class SeriesError(ValueError):
    """A DICOM series that a segmentation cannot reference exactly."""


def series_files(folder: Path, series_uid: str | None = None) -> list[Path]:
    """Files of the series the scan was read from: `series_uid`, or the one inference.io.dicom_series
    chooses in `folder` (the same rules as the reading, so the SEG references the segmented series)."""
    from inference.io.dicom_series import SeriesError as ChoiceError, choose_series, list_series
    series = list_series(folder)
    if not series:
        raise SeriesError(f"{folder}: folder holds no DICOM series")
    try:
        return [Path(name) for name in choose_series(series, series_uid)[0].files]
    except ChoiceError as error:
        raise SeriesError(f"{folder}: {error}") from None


def read_headers(files: list[Path]) -> list[pydicom.Dataset]:
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as error:  # pydicom raises many types for damaged files
            raise SeriesError(f"{path}: not a readable DICOM file ({type(error).__name__}: {error})") from None
    return headers


def _slice_index(header: pydicom.Dataset, geometry: Geometry, path: Path) -> int:
    """Array slice that `header`'s instance lies on; SeriesError when it lies on none."""
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"):
        if keyword not in header:
            raise SeriesError(f"{path}: no {keyword}")
    orientation = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
    expected = np.concatenate([geometry.axis_direction(2), geometry.axis_direction(1)])  # row, column cosines
    if not np.allclose(orientation, expected, atol=ORIENTATION_TOLERANCE):
        raise SeriesError(f"{path}: image orientation {orientation.tolist()} differs from the series' {expected.tolist()}")
    if (int(header.Rows), int(header.Columns)) != geometry.shape[1:]:
        raise SeriesError(f"{path}: {header.Rows}x{header.Columns} pixels, the series has {geometry.shape[1]}x{geometry.shape[2]}")
    offset = np.asarray(header.ImagePositionPatient, dtype=np.float64) - np.asarray(geometry.origin)
    step = geometry.axis_direction(0) * geometry.spacing[0]
    index = int(round(float(offset @ step) / float(step @ step)))
    if not 0 <= index < geometry.shape[0] or \
            np.abs(offset - index * step).max() > POSITION_TOLERANCE_MM:
        raise SeriesError(f"{path}: image position {offset.tolist()} from the first slice lies on no slice "
                          f"of the series' {geometry.shape[0]}-slice grid")
    return index


def match_slices(files: list[Path], headers: list[pydicom.Dataset], geometry: Geometry) -> list[pydicom.Dataset]:
    """Headers ordered by array slice: element i lies on slice i of `geometry`."""
    slices: list[pydicom.Dataset | None] = [None] * geometry.shape[0]
    series_uids = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(series_uids) != 1:
        raise SeriesError(f"{files[0].parent}: instances of {len(series_uids)} series")
    for path, header in zip(files, headers):
        index = _slice_index(header, geometry, path)
        if slices[index] is not None:
            raise SeriesError(f"{path}: a second instance on slice {index}")
        slices[index] = header
    missing = [i for i, h in enumerate(slices) if h is None]
    if missing:
        raise SeriesError(f"{files[0].parent}: no instance for slice(s) {missing[:10]} of {geometry.shape[0]}")
    return slices
