"""`--continue`: is a case's output already a finished label map for its input?

A label map is finished when it can be read whole (header and every voxel: a truncated or corrupted
gzip fails here), holds integer labels, and lies on exactly the input's grid (shape, spacing, origin,
direction). Atomic writes mean a partial file never carries the final name; this check guards
against everything else (a copy cut short, a disk that filled, an output of another input).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from inference.core.geometry import Geometry
from inference.io.images import geometry_of

# ITK writes spacing, origin and direction as decimal text in some formats; a finished output of
# the same input agrees to far better than this.
GEOMETRY_TOLERANCE = 1e-3


def input_geometry(path: Path) -> Geometry:
    """The geometry of an input scan from its header alone (a file, or a DICOM series folder)."""
    path = Path(path)
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]) if series else ()
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return geometry_of(reader.Execute())  # a series has no single header to read
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return Geometry(tuple(reversed(reader.GetSize())), tuple(reversed(reader.GetSpacing())),
                    reader.GetOrigin(), reader.GetDirection())


def finished_output_problem(output: Path, expected: Geometry) -> str | None:
    """None when `output` is a complete, readable label map on `expected`'s grid; else why not."""
    output = Path(output)
    if not output.is_file():
        return "no output"
    try:
        image = sitk.ReadImage(str(output))  # reads every voxel: truncation shows here
    except RuntimeError as error:
        return f"unreadable output ({str(error).strip().splitlines()[-1][:160] if str(error).strip() else 'read failed'})"
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        return "output is not a 3D label map"
    if image.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16):
        return f"output pixel type {image.GetPixelIDTypeAsString()} is not a label map"
    return geometry_mismatch(geometry_of(image), expected)


def geometry_mismatch(found: Geometry, expected: Geometry) -> str | None:
    if found.shape != expected.shape:
        return f"output shape {found.shape} differs from the input's {expected.shape}"
    for name in ("spacing", "origin", "direction"):
        if not np.allclose(getattr(found, name), getattr(expected, name), rtol=0, atol=GEOMETRY_TOLERANCE):
            return f"output {name} {getattr(found, name)} differs from the input's {getattr(expected, name)}"
    return None


def case_is_finished(input_path: Path, output: Path) -> tuple[bool, str]:
    """(True, "") for a finished output; (False, cause) otherwise, the input's problems included."""
    try:
        expected = input_geometry(input_path)
    except (RuntimeError, ValueError, IndexError) as error:
        return False, f"input header unreadable ({str(error).strip()[:160]})"
    problem = finished_output_problem(output, expected)
    return problem is None, problem or ""
