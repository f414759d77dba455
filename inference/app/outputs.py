"""Which files a case's label map becomes: NIfTI, DICOM SEG, or both (`--output-format`).

`dicom-seg` writes a binary segmentation (the SOP class every SEG-aware viewer reads),
`dicom-seg-labelmap` a label map segmentation (DICOM 2024: faster, fewer viewers read it yet).

A DICOM SEG references the instances of a DICOM series, so it is written only for a case read
from a DICOM series folder; any other input keeps its NIfTI label map and the case report says
so. When both are asked for, the SEG is built (and its source series checked) before anything
is written, so a series it cannot reference leaves no file of the case behind.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from inference.core.geometry import Geometry
from inference.io.images import Case, write_labels

NIFTI, DICOM_SEG, DICOM_SEG_LABELMAP = "nifti", "dicom-seg", "dicom-seg-labelmap"
OUTPUT_FORMATS = (NIFTI, DICOM_SEG, DICOM_SEG_LABELMAP)
SEG_SUFFIX = ".seg.dcm"
NOT_DICOM_NOTE = "DICOM SEG asked for, but the input is not a DICOM series: wrote NIfTI instead"


def parse_output_formats(text: str) -> tuple[str, ...]:
    """'nifti', a SEG format, or nifti and one SEG format, comma-separated -> formats in that order."""
    formats = tuple(part.strip() for part in text.split(","))
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown or not formats or len(set(formats)) != len(formats) or {DICOM_SEG, DICOM_SEG_LABELMAP} <= set(formats):
        raise ValueError("output format must be nifti, dicom-seg or dicom-seg-labelmap, or nifti and one "
                         f"of the two SEG formats comma-separated; got {text!r}")
    return formats


def seg_path(case: Case, output_dir: Path) -> Path:
    return Path(output_dir) / f"{case.case_id}{SEG_SUFFIX}"


def output_writer(formats: tuple[str, ...]):
    """`write(case, output_dir, labels, geometry, report)` for pipeline.run_cases."""
    def write(case: Case, output_dir: Path, labels: np.ndarray, geometry: Geometry, report) -> None:
        seg = None
        seg_format = next((f for f in formats if f != NIFTI), None)
        if seg_format is not None and Path(case.path).is_dir():
            from inference.app.dicom_seg.writer import prepare_dicom_seg
            started = time.perf_counter()
            seg = prepare_dicom_seg(labels, geometry, case.path, labelmap=seg_format == DICOM_SEG_LABELMAP,
                                    series_uid=case.series_uid)
            report.seconds["dicom_seg_build"] = time.perf_counter() - started
        elif seg_format is not None:
            report.output_note = NOT_DICOM_NOTE
        outputs = {}
        if NIFTI in formats or seg is None:
            outputs[NIFTI] = case.output_path(output_dir)
            write_labels(outputs[NIFTI], labels, geometry)
        if seg is not None:
            from inference.app.dicom_seg.writer import write_dataset_atomic
            outputs[seg_format] = seg_path(case, output_dir)
            started = time.perf_counter()
            write_dataset_atomic(seg, outputs[seg_format])
            report.seconds["dicom_seg_write"] = time.perf_counter() - started
        report.outputs = {name: str(path) for name, path in outputs.items()}
        report.output = str(next(iter(outputs.values())))
    return write
