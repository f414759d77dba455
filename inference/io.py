"""Reading CT scans and writing label maps, with the input's exact geometry.

Everything goes through SimpleITK (NIfTI, MHA/MHD, NRRD, DICOM series folders). Errors are
`InputError`s that name the file and the cause in one line. Label maps are written atomically: a
temporary file in the destination folder, then `os.replace`, so a reader never sees a partial file.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from inference.geometry import Geometry, GeometryError

log = logging.getLogger(__name__)

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
    path: Path  # a file, or a folder holding one DICOM series

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
    image = _read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"vector pixel type with {image.GetNumberOfComponentsPerPixel()} components, "
                               "expected a scalar CT")
    dimension = image.GetDimension()
    if dimension != 3:
        raise InputError(path, f"{dimension}D image of size {image.GetSize()}, expected a 3D CT")
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


def _read_sitk(path: Path) -> sitk.Image:
    if not path.exists():
        raise InputError(path, "file does not exist")
    try:
        if path.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(path, "folder holds no DICOM series")
            if len(series) > 1:
                log.warning("%s: %d DICOM series, reading the first (%s)", path, len(series), series[0])
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        if image_suffix(path.name) is None:
            raise InputError(path, f"unknown extension; expected one of {', '.join(IMAGE_SUFFIXES)} "
                                   "or a DICOM folder")
        if path.stat().st_size == 0:
            raise InputError(path, "empty file")
        return sitk.ReadImage(str(path))
    except RuntimeError as error:  # SimpleITK reports every reader failure as RuntimeError
        detail = str(error).strip().splitlines()
        reason = next((line.strip() for line in detail if "rror" in line or "nable" in line), detail[-1] if detail else "")
        raise InputError(path, f"not a readable image ({reason[:200]})") from None


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


def write_labels(path, labels: np.ndarray, geometry: Geometry) -> None:
    """Write a uint8 label map with exactly `geometry` (shape, spacing, origin, direction)."""
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"labels out of uint8 range: {labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
    write_image_atomic(to_sitk(labels, geometry), path)


def remove_stale_partials(folder) -> list[Path]:
    """Delete temporary outputs left by a run that was killed mid-write."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(".") and PARTIAL_MARKER in entry.name and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed
