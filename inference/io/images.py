"""Reading CT scans and writing label maps, with the input's exact geometry.

Everything goes through SimpleITK (NIfTI, MHA/MHD, NRRD, DICOM series folders). Errors are
`InputError`s that name the file and the cause in one line. Label maps are written atomically: a
temporary file in the destination folder, then `os.replace`, so a reader never sees a partial file.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from inference.core.geometry import Geometry, GeometryError


# ITK prints reader warnings straight to stderr; our errors already name the file and the cause.
sitk.ProcessObject_SetGlobalWarningDisplay(False)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
CHANNEL_SUFFIX = "_0000"  # FLARE / nnU-Net naming: <ID>_0000.nii.gz is channel 0 of case <ID>
PARTIAL_MARKER = ".partial-"  # temporary outputs: .<name>.partial-<pid>.nii.gz


class InputError(Exception):
    """A case that cannot be read or used; the message names the file and the cause."""

    def __init__(self, path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


@dataclass(frozen=True)
class Case:
    case_id: str
    path: Path  # a file, or a folder holding DICOM series
    series_uid: str | None = None  # the DICOM series to read (None: chosen by inference.io.dicom_series)

    def output_path(self, output_dir: Path) -> Path:
        return Path(output_dir) / f"{self.case_id}.nii.gz"


def image_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), None)


def case_id_from_name(name: str) -> str:
    suffix = image_suffix(name)
    stem = name[: -len(suffix)] if suffix else Path(name).stem
    return stem[: -len(CHANNEL_SUFFIX)] if stem.endswith(CHANNEL_SUFFIX) else stem


def discover_cases(input_path) -> list[Case]:
    """Cases in a folder (sorted by name), or the single file or DICOM folder given.

    Files with an unknown extension are still returned, so that the run names them as failures
    instead of silently skipping a scan the user expected to be segmented. Hidden files and our
    own partial outputs are ignored.
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise FileNotFoundError(f"{input_path}: input does not exist")
    if input_path.is_file() or _is_dicom_folder(input_path):
        return [Case(case_id_from_name(input_path.name), input_path)]
    cases = []
    for entry in sorted(input_path.iterdir()):
        if entry.name.startswith(".") or PARTIAL_MARKER in entry.name:
            continue
        if entry.is_dir() and not _is_dicom_folder(entry):
            continue
        cases.append(Case(case_id_from_name(entry.name), entry))
    return cases


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def read_image(path) -> tuple[np.ndarray, Geometry]:
    """Read a 3D scalar image as a float32 (z, y, x) array and its Geometry.

    Raises InputError for anything that is not a finite 3D scalar image with a valid geometry.
    """
    path = Path(path)
    return image_array(path, read_sitk(path))


def image_array(path: Path, image: sitk.Image) -> tuple[np.ndarray, Geometry]:
    """`image` (read from `path`) as a float32 (z, y, x) array and its Geometry, validated."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"vector pixel type with {image.GetNumberOfComponentsPerPixel()} components, "
                               "expected a scalar CT")
    dimension = image.GetDimension()
    if dimension != 3:
        raise InputError(path, f"{dimension}D image of size {image.GetSize()}, expected a 3D CT")
    _check_nifti_header(path)
    try:
        geometry = geometry_of(image)
    except GeometryError as error:
        raise InputError(path, str(error)) from None
    array = sitk.GetArrayFromImage(image)
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise InputError(path, f"{bad} non-finite (NaN/Inf) voxels")
    return array, geometry


def read_ct(path, assume_ct: bool = False, series_uid: str | None = None) -> tuple[np.ndarray, Geometry]:
    """`read_image` for a CT scan: values in HU, CT stored without its rescale intercept shifted,
    anything that is not CT refused (InputError); see `inference.io.ct_input`."""
    from inference.io.ct_input import read_ct_scan
    array, geometry, _ = read_ct_scan(path, assume_ct=assume_ct, series_uid=series_uid)
    return array, geometry


def _check_nifti_header(path: Path) -> None:
    """Reject NIfTI files that ITK reads without complaint although they cannot be right.

    - voxel size (pixdim[1..3]) zero, negative or NaN: readers disagree and none fails (nifti1_io
      inside ITK silently replaces a zero or NaN pixdim by 1 mm before SimpleITK sees it, and ITK
      turns a negative one into a mirrored axis, a left-right swap for x);
    - truncated voxel data (an interrupted copy or download): ITK fills the missing voxels and
      reports success. Uncompressed files are checked by size; gzip files by the uncompressed
      size in their trailer, and only if that disagrees (multi-member gzip) by decompressing.
    """
    if image_suffix(path.name) not in (".nii", ".nii.gz"):
        return
    header = _nifti_header(path)
    if header is None:
        return
    pixdim, expected = header
    if not all(math.isfinite(v) and v > 0 for v in pixdim):
        raise InputError(path, f"NIfTI header voxel size pixdim[1..3] = {tuple(pixdim)}, expected finite positive mm")
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            trailer_size = struct.unpack("<I", handle.read(4))[0]
        if trailer_size == expected % 2**32:
            return
        actual = _gzip_content_size(path)
        if actual is None:
            raise InputError(path, f"truncated: the compressed data ends before the {expected} bytes its header describes")
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise InputError(path, f"truncated: {actual} bytes where the header describes {expected}")


def _nifti_header(path: Path) -> tuple[tuple[float, float, float], int] | None:
    """(pixdim[1..3], header + voxel bytes) from a NIfTI-1 or NIfTI-2 header, None if unparsable."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for order in "<>":
        size = struct.unpack(order + "i", header[:4])[0] if len(header) >= 4 else 0
        if size == 348 and len(header) >= 348:  # NIfTI-1
            dim = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            pixdim = struct.unpack(order + "8f", header[76:108])[1:4]
            offset = struct.unpack(order + "f", header[108:112])[0]
        elif size == 540 and len(header) >= 540:  # NIfTI-2
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dim = struct.unpack(order + "8q", header[16:80])
            pixdim = struct.unpack(order + "8d", header[104:168])[1:4]
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        if not 1 <= dim[0] <= 7 or bitpix <= 0 or not math.isfinite(offset):
            return None
        voxels = math.prod(max(int(d), 1) for d in dim[1:dim[0] + 1])
        return pixdim, int(max(offset, size)) + voxels * bitpix // 8
    return None


def _gzip_content_size(path: Path, chunk: int = 2**24) -> int | None:
    """Uncompressed size of a (possibly multi-member) gzip file; None if its stream ends early or is corrupt."""
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while block := handle.read(chunk):
                total += len(block)
    except (OSError, EOFError, zlib.error):
        return None
    return total


def read_sitk(path: Path) -> sitk.Image:
    if not path.exists():
        raise InputError(path, "file does not exist")
    try:
        if path.is_dir():
            return read_dicom_folder(path)[0]
        if image_suffix(path.name) is None:
            raise InputError(path, f"unknown extension; expected one of {', '.join(IMAGE_SUFFIXES)} "
                                   "or a DICOM folder")
        if path.stat().st_size == 0:
            raise InputError(path, "empty file")
        return sitk.ReadImage(str(path))
    except RuntimeError as error:  # SimpleITK reports every reader failure as RuntimeError
        raise InputError(path, f"not a readable image ({_first_error_line(error)})") from None


def _first_error_line(error: RuntimeError) -> str:
    detail = str(error).strip().splitlines()
    return next((line.strip() for line in detail if "rror" in line or "nable" in line), detail[-1] if detail else "")[:200]


def read_dicom_folder(path: Path, series_uid: str | None = None):
    """(image, SeriesInfo, choice report) of the CT volume series in a DICOM folder
    (`inference.io.dicom_series` picks it, or `series_uid`); errors as InputError."""
    from inference.io.dicom_series import SeriesError, read_series
    if not sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)):
        raise InputError(path, "folder holds no DICOM series")
    try:
        return read_series(path, series_uid)
    except SeriesError as error:
        raise InputError(path, str(error)) from None
    except RuntimeError as error:  # SimpleITK reports every reader failure as RuntimeError
        raise InputError(path, f"not a readable DICOM series ({_first_error_line(error)})") from None


def geometry_of(image: sitk.Image) -> Geometry:
    size_xyz = image.GetSize()
    return Geometry(
        shape=tuple(reversed(size_xyz)),
        spacing=tuple(reversed(image.GetSpacing())),
        origin=image.GetOrigin(),
        direction=image.GetDirection(),
    )


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.spacing_xyz)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def write_image_atomic(image: sitk.Image, path, compress: bool = True) -> None:
    """Write through a temporary file in the same folder, then rename (atomic on POSIX)."""
    path = Path(path)
    suffix = image_suffix(path.name) or path.suffix
    temporary = path.with_name(f".{path.name[: -len(suffix)]}{PARTIAL_MARKER}{os.getpid()}{suffix}")
    try:
        sitk.WriteImage(image, str(temporary), useCompression=compress)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    """Write a text file (JSON, CSV) through a temporary in the same folder, then rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}{PARTIAL_MARKER}{os.getpid()}")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomic(path, payload: dict) -> None:
    """`payload` as indented JSON, written like `write_text_atomic` (never a partial file)."""
    write_text_atomic(path, json.dumps(payload, indent=2))


def write_labels(path, labels: np.ndarray, geometry: Geometry) -> None:
    """Write a uint8 label map with exactly `geometry` (shape, spacing, origin, direction)."""
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"labels out of uint8 range: {labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
    write_image_atomic(to_sitk(labels, geometry), path)


def remove_stale_partials(folder, case_ids=None) -> list[Path]:
    """Delete temporary outputs left by a run that was killed mid-write: all of them, or only those
    of `case_ids` (other processes may be writing theirs into the same folder)."""
    removed = []
    folder = Path(folder)
    prefixes = None if case_ids is None else tuple(f".{case_id}{PARTIAL_MARKER}" for case_id in case_ids)
    if folder.is_dir():
        for entry in folder.iterdir():
            if prefixes is not None and not entry.name.startswith(prefixes):
                continue
            if entry.name.startswith(".") and PARTIAL_MARKER in entry.name and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed
