"""Write a CT volume as a DICOM series (CT Image Storage, one file per slice) with pydicom.

Used by the DICOM SEG tests and benchmark: the series must be what a scanner writes (one study,
series and frame of reference UID, consistent positions), with a chosen instance order on disk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from inference.core.geometry import Geometry


def _decimal(values) -> list[str]:
    return [f"{float(v):.6f}" for v in values]


def _slice_dataset(common: dict, index: int, instance_number: int, pixels: np.ndarray,
                   geometry: Geometry) -> pydicom.Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    for keyword, value in common.items():
        setattr(ds, keyword, value)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = _decimal(geometry.index_to_physical((index, 0, 0)))
    ds.SliceLocation = f"{float(geometry.index_to_physical((index, 0, 0))[2]):.6f}"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
    return ds


def write_ct_series(folder, volume: np.ndarray, geometry: Geometry, *, descending: bool = False,
                    patient_position: str = "HFS") -> list[Path]:
    """One file per slice of `volume` (HU, z-y-x) in `folder`; instance numbers (and file names)
    ascend along the array's slice axis, or descend with `descending`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, column = geometry.axis_direction(2), geometry.axis_direction(1)
    common = dict(
        PatientName="Phantom^Test", PatientID="TEST0001", PatientBirthDate="19700101", PatientSex="O",
        StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), FrameOfReferenceUID=generate_uid(),
        StudyDate="20261204", StudyTime="120000", AccessionNumber="A0001", StudyID="1",
        ReferringPhysicianName="", Modality="CT", SeriesNumber=2, Manufacturer="test",
        PatientPosition=patient_position, ImageOrientationPatient=_decimal(list(row) + list(column)),
        PixelSpacing=_decimal(geometry.spacing[1:]), SliceThickness=f"{geometry.spacing[0]:.6f}",
        SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16,
        HighBit=15, PixelRepresentation=1, RescaleIntercept="0", RescaleSlope="1", RescaleType="HU",
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], KVP="120", FrameOfReferenceUID_=None)
    common.pop("FrameOfReferenceUID_")
    count = volume.shape[0]
    paths = []
    for index in range(count):
        number = count - index if descending else index + 1
        ds = _slice_dataset(common, index, number, np.rint(volume[index]), geometry)
        path = folder / f"IM{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
