"""Which files a case's label map becomes: NIfTI, DICOM SEG, or both (`--output-format`).

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

NIFTI, DICOM_SEG = "nifti", "dicom-seg"
OUTPUT_FORMATS = (NIFTI, DICOM_SEG)
SEG_SUFFIX = ".seg.dcm"
NOT_DICOM_NOTE = "dicom-seg asked for, but the input is not a DICOM series: wrote NIfTI instead"


def parse_output_formats(text: str) -> tuple[str, ...]:
    """'nifti', 'dicom-seg' or 'nifti,dicom-seg' (any order, no repeats) -> formats in that order."""
    formats = tuple(part.strip() for part in text.split(","))
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown or not formats or len(set(formats)) != len(formats):
        raise ValueError(f"output format must be nifti, dicom-seg or nifti,dicom-seg; got {text!r}")
    return formats


def seg_path(case: Case, output_dir: Path) -> Path:
    return Path(output_dir) / f"{case.case_id}{SEG_SUFFIX}"


def output_writer(formats: tuple[str, ...]):
    """`write(case, output_dir, labels, geometry, report)` for pipeline.run_cases."""
    def write(case: Case, output_dir: Path, labels: np.ndarray, geometry: Geometry, report) -> None:
        seg = None
        is_series = Path(case.path).is_dir()
        if DICOM_SEG in formats and is_series:
            from inference.app.dicom_seg.writer import prepare_dicom_seg
            started = time.perf_counter()
            seg = prepare_dicom_seg(labels, geometry, case.path)
            report.seconds["dicom_seg_build"] = time.perf_counter() - started
        elif DICOM_SEG in formats:
            report.output_note = NOT_DICOM_NOTE
        outputs = {}
        if NIFTI in formats or seg is None:
            outputs[NIFTI] = case.output_path(output_dir)
            write_labels(outputs[NIFTI], labels, geometry)
        if seg is not None:
            from inference.app.dicom_seg.writer import write_dataset_atomic
            outputs[DICOM_SEG] = seg_path(case, output_dir)
            started = time.perf_counter()
            write_dataset_atomic(seg, outputs[DICOM_SEG])
            report.seconds["dicom_seg_write"] = time.perf_counter() - started
        report.outputs = {name: str(path) for name, path in outputs.items()}
        report.output = str(next(iter(outputs.values())))
    return write
