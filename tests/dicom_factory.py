"""DICOM series written with SimpleITK (GDCM) slice by slice, as scanners and PACS exports lay them out."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
UID_ROOT = "1.2.826.0.1.3680043.2.1125.99"
CT_MODALITY_ELEMENT = b"\x08\x00\x60\x00\x02\x00\x00\x00CT"  # (0008,0060) "CT", implicit VR little endian (GDCM)


def tilted(degrees: float) -> tuple[float, ...]:
    """Axial rows, columns tilted about x: what a tilted gantry writes."""
    t = math.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, math.cos(t), math.sin(t))


def _text(values) -> str:
    return "\\".join(f"{v:.10g}" for v in values)  # DS: at most 16 characters


def write_series(folder, slices: np.ndarray, *, number: int, spacing=(3.0, 3.0, 3.0), modality="CT",
                 image_type="ORIGINAL\\PRIMARY\\AXIAL", description="", orientation=AXIAL,
                 positions=None, rescale: tuple[float, float] | None = (1.0, -1024.0),
                 drop: tuple[int, ...] = (), prefix: str | None = None) -> str:
    """Write `slices` (z, rows, columns) as one series into `folder`; returns its SeriesInstanceUID.

    Positions default to a regular stack along the slice normal, `spacing[0]` apart; `rescale`
    (slope, intercept) is written to the header and GDCM stores (value - intercept) / slope (a
    non-integer slope needs float `slices`);
    `drop` leaves those slice indices out (a missing slice).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uid = f"{UID_ROOT}.{number}"
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, column)
    if positions is None:
        positions = [tuple(normal * spacing[0] * z) for z in range(slices.shape[0])]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(slices.shape[0]):
        if z in drop:
            continue
        image = sitk.GetImageFromArray(np.ascontiguousarray(slices[z]))
        image.SetSpacing((spacing[2], spacing[1]))
        tags = {"0020|000e": uid, "0020|0011": str(number), "0008|103e": description, "0008|0060": "CT",
                "0008|0008": image_type, "0020|0037": _text(orientation), "0020|0032": _text(positions[z]),
                "0020|0013": str(z + 1), "0008|0018": f"{uid}.{z + 1}", "0028|0030": _text(spacing[1:])}
        if rescale is not None:
            tags.update({"0028|1053": f"{rescale[0]:g}", "0028|1052": f"{rescale[1]:g}"})
        if slices.dtype.kind == "f":  # GDCM stores floats as int16 through the rescale, if told so
            tags.update({"0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1"})
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        path = folder / f"{prefix or f's{number}'}_{z:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        if modality != "CT":
            _set_modality(path, modality)
    return uid


def _set_modality(path: Path, modality: str) -> None:
    """GDCM writes another modality as an enhanced multi-frame object without slice positions;
    a plain CT image object with its Modality element rewritten is what such a series looks like."""
    data = path.read_bytes()
    assert data.count(CT_MODALITY_ELEMENT) == 1 and len(modality) == 2, path
    path.write_bytes(data.replace(CT_MODALITY_ELEMENT, CT_MODALITY_ELEMENT[:-2] + modality.encode()))
