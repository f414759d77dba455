"""A label map as a DICOM Segmentation (one segment per label present) of its source series.

Two segmentation types: BINARY (the default: one 1-bit frame per segment and slice, the Segmentation
Storage SOP class every SEG-aware viewer and PACS reads) and LABELMAP (one 8-bit frame per slice
holding segment numbers, the Label Map Segmentation Storage SOP class added to DICOM in 2024:
several times fewer frames, so faster to write and read, but fewer viewers read it yet).

highdicom builds the object: frame i of the segmentation is tied to source instance i (the
instance lying on array slice i, matched by `series.match_slices`), so every frame carries its
source's own position and orientation and the geometry equals the series' exactly, whatever
the files' order on disk, the slice order or the patient orientation. The file is written to a
temporary name in the destination folder and renamed, so no partial file is ever visible.
"""
from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from scipy import ndimage

from inference.app.dicom_seg.codes import SEGMENT_CODES
from inference.app.dicom_seg.series import match_slices, read_headers, series_files
from inference.core.geometry import Geometry
from inference.io.images import PARTIAL_MARKER
from inference.core.labels import LABEL_NAMES

ALGORITHM_NAME = "FLARE cascade"
ALGORITHM_VERSION = "1"
SERIES_NUMBER = 9101  # a high number keeps derived series after the scanner's own in viewers
# Said in every file: the shipped weights are a demonstration trained on synthetic phantoms.
CONTENT_DESCRIPTION = "Abdominal organs and tumour; research use, not for diagnosis"


def segment_descriptions(labels_present: list[int]) -> list[hd.seg.SegmentDescription]:
    """One description per label present, numbered 1..n in label order."""
    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence,
                                                   version=ALGORITHM_VERSION)
    descriptions = []
    for number, label in enumerate(labels_present, start=1):
        code = SEGMENT_CODES[label]
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=LABEL_NAMES[label], segmented_property_category=code.category,
            segmented_property_type=code.property_type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=f"FLARE label {label}",
            display_color=hd.color.CIELabColor.from_rgb(*code.colour_rgb))
        if code.modifier is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(code.modifier)]
        descriptions.append(description)
    return descriptions


def build_segmentation(labels: np.ndarray, geometry: Geometry, sources: list[pydicom.Dataset],
                       labelmap: bool = False) -> hd.seg.Segmentation:
    """The Segmentation of `labels` (uint8, FLARE values 0..14) on `sources` (source of slice i first)."""
    # find_objects: one pass, no 64-bit copy of the volume (np.bincount would make one)
    present = [index + 1 for index, box in enumerate(ndimage.find_objects(labels)) if box is not None]
    unknown = [v for v in present if v not in SEGMENT_CODES]
    if unknown:
        raise ValueError(f"label values {unknown} have no segment code")
    has_labels = bool(present)
    if not present:  # a SEG needs one segment; an empty liver segment says "nothing found"
        present = [1]
    segments = labels  # highdicom reads a label map's values as segment numbers 1..n
    if present != list(range(1, len(present) + 1)):
        segment_numbers = np.zeros(256, dtype=np.uint8)
        segment_numbers[present] = np.arange(1, len(present) + 1)
        segments = segment_numbers[labels]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP if labelmap else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(present), series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="FLARE cascade project", manufacturer_model_name=ALGORITHM_NAME,
        software_versions=ALGORITHM_VERSION, device_serial_number="none",
        content_description=CONTENT_DESCRIPTION, content_label="SEGMENTATION",
        omit_empty_frames=has_labels)


def prepare_dicom_seg(labels: np.ndarray, geometry: Geometry, series_folder, labelmap: bool = False,
                      series_uid: str | None = None) -> hd.seg.Segmentation:
    """The SEG of `labels` (on the array grid of the DICOM series in `series_folder`), not yet written.

    Raises SeriesError when the series' instances do not tile `geometry` one to one."""
    files = series_files(Path(series_folder), series_uid)
    sources = match_slices(files, read_headers(files), geometry)
    return build_segmentation(labels, geometry, sources, labelmap)


def write_dicom_seg(path, labels: np.ndarray, geometry: Geometry, series_folder, labelmap: bool = False) -> None:
    write_dataset_atomic(prepare_dicom_seg(labels, geometry, series_folder, labelmap), Path(path))


def write_dataset_atomic(dataset: pydicom.Dataset, path: Path) -> None:
    temporary = path.with_name(f".{path.name}{PARTIAL_MARKER}{os.getpid()}")
    try:
        dataset.save_as(temporary, enforce_file_format=True)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
