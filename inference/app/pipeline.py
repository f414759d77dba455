"""Many cases through one segmenter: per-case isolation, a prefetching reader, a background writer.

The next case is read while the current one is predicted and the previous one written (one thread
each, at most one case ahead, so RAM stays bounded). A case that fails is reported with its cause
and never stops the others; its output file is never created.
"""
from __future__ import annotations

import logging
import resource
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from inference.engine.device_memory import recording
from inference.core.geometry import Geometry
from inference.io.ct_input import read_ct_scan
from inference.io.images import Case, InputError, write_labels
from inference.io.orientation import canonicalize, closest_axis_map

log = logging.getLogger(__name__)


class Segmenter(Protocol):
    def segment(self, volume: np.ndarray, geometry: Geometry, timings: dict[str, float]) -> np.ndarray:
        """uint8 labels with `volume`'s shape; adds per-step seconds to `timings`."""


@dataclass
class CaseReport:
    case_id: str
    input: str
    output: str | None
    status: str  # "ok" or "failed"
    error: str | None = None
    shape_zyx: list[int] | None = None
    spacing_zyx: list[float] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    # the device-memory ledger's prediction for this case (tensors on the device, peak per stage,
    # fallbacks taken), beside the measured peak_gpu_mb; inference.engine.device_memory
    predicted_gpu_mb: float | None = None
    peak_gpu_allocated_mb: float | None = None  # measured: torch's allocated peak of this process
    device_memory: dict | None = None
    labels_present: list[int] | None = None
    orientation: dict | None = None  # axes permuted/flipped to the canonical layout, when any were
    volumes: dict | None = None  # organ and tumor volumes, when asked for
    details: dict | None = None  # what the segmenter decided (cascade: aorta crop, contrast, tumor filters)
    quality: dict | None = None  # inference.app.quality flags, unless --qa off
    outputs: dict | None = None  # format -> file written (nifti, dicom-seg)
    output_note: str | None = None  # why an asked-for format was not written
    input_info: dict | None = None  # what reading decided: CT or not (ct_check), the DICOM series chosen

    def as_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    """This process's RSS high-water mark in MiB.

    Linux: VmHWM, which belongs to the address space; ru_maxrss would be inherited across fork and
    exec, so a run started from a large parent would report the parent's footprint.
    """
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def peak_gpu_mb() -> float | None:
    import torch
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_reserved() / 2**20


def peak_gpu_allocated_mb() -> float | None:
    """torch's allocated peak (what the ledger predicts), or None without a started CUDA context."""
    import torch
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def read_case(case: Case, assume_ct: bool = False):
    """(HU volume, Geometry, read seconds, input info) of one case; InputError for unusable input."""
    start = time.perf_counter()
    volume, geometry, info = read_ct_scan(case.path, assume_ct=assume_ct, series_uid=case.series_uid)
    return volume, geometry, time.perf_counter() - start, info


def segment_canonical(segmenter: Segmenter, volume: np.ndarray, geometry: Geometry,
                      timings: dict[str, float]) -> np.ndarray:
    """Segment in the canonical array layout (inference.io.orientation), labels back in `volume`'s layout."""
    view, canonical, restore = canonicalize(volume, geometry)
    return restore(segmenter.segment(view, canonical, timings))


def _describe(error: BaseException) -> str:
    if isinstance(error, InputError):
        return error.cause
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:500]


def run_cases(cases: list[Case], output_dir: Path, segmenter: Segmenter, *,
              on_case_done: Callable[[CaseReport, np.ndarray | None, np.ndarray | None, Geometry | None], None] | None = None,
              progress=None, first_read: Future | None = None,
              canonical_orientation: bool = True, assume_ct: bool = False,
              write_outputs: Callable[[Case, Path, np.ndarray, Geometry, CaseReport], None] | None = None,
              ) -> list[CaseReport]:
    """Segment every case into output_dir/<ID>.nii.gz; returns one report per case, in order.

    With `canonical_orientation` (the default) the segmenter sees every scan in the canonical
    array layout (inference.io.orientation) and the labels are written back in the scan's own layout.

    `on_case_done(report, volume, labels, geometry)` runs after a case is segmented (volume
    reports, previews); its failures fail that case only. `first_read` is the first case's read,
    already started by the caller (so that it overlaps model loading). `write_outputs(case,
    output_dir, labels, geometry, report)` writes a case's files (default: the NIfTI label map;
    inference.app.outputs for DICOM SEG) and sets report.output. `assume_ct` segments scans that
    `inference.io.ct_check` finds not to be CT.
    """
    output_dir = Path(output_dir)
    reports: list[CaseReport] = []
    with ThreadPoolExecutor(1, thread_name_prefix="reader") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="writer") as writer:
        pending_read = first_read or (reader.submit(read_case, cases[0], assume_ct) if cases else None)
        pending_write: tuple[Future, CaseReport] | None = None
        for index, case in enumerate(cases):
            current = pending_read
            pending_read = reader.submit(read_case, cases[index + 1], assume_ct) if index + 1 < len(cases) else None
            report = CaseReport(case.case_id, str(case.path), None, "failed")
            started = time.perf_counter()
            try:
                volume, geometry, read_seconds, report.input_info = current.result()
                report.seconds["read"] = read_seconds
                labels = _segment_case(segmenter, volume, geometry, report, canonical_orientation)
                _warn_skipped_stages(case, report.details)
                if on_case_done is not None:
                    on_case_done(report, volume, labels, geometry)
                del volume
            except Exception as error:  # one case's failure never stops the others
                report.error = _describe(error)
                log.error("%s: %s", case.path, report.error)
                log.debug("traceback", exc_info=True)
                labels = None
            if pending_write is not None:
                _finish_write(*pending_write)
                pending_write = None
            if labels is not None:
                future = writer.submit(_write, write_outputs or write_nifti, case, output_dir, labels, geometry, report)
                pending_write = (future, report)
            report.seconds["total"] = time.perf_counter() - started
            report.peak_rss_mb = round(peak_rss_mb(), 1)
            gpu = peak_gpu_mb()
            report.peak_gpu_mb = round(gpu, 1) if gpu is not None else None
            allocated = peak_gpu_allocated_mb()
            report.peak_gpu_allocated_mb = round(allocated, 1) if allocated is not None else None
            reports.append(report)
            if progress is not None:
                progress.update(1)
        if pending_write is not None:
            _finish_write(*pending_write)
    return reports


def _warn_skipped_stages(case: Case, details: dict | None) -> None:
    """One warning line per case that the time budget or an implausible organ cut short."""
    skipped = ((details or {}).get("time_budget") or {}).get("skipped")
    if skipped:
        log.warning("%s: written without the tumor stage(s) %s", case.case_id,
                    "; ".join(f"{name} ({why})" for name, why in skipped.items()))


def _segment_case(segmenter: Segmenter, volume: np.ndarray, geometry: Geometry, report: CaseReport,
                  canonical_orientation: bool) -> np.ndarray:
    report.shape_zyx, report.spacing_zyx = list(geometry.shape), list(geometry.spacing)
    with recording() as ledger:  # the device-memory ledger's account of this case
        if canonical_orientation:
            axis_map = closest_axis_map(geometry.direction)
            report.orientation = None if axis_map.is_identity else axis_map.as_dict()
            labels = segment_canonical(segmenter, volume, geometry, report.seconds)
        else:
            labels = segmenter.segment(volume, geometry, report.seconds)
    if ledger.peak:
        report.device_memory = ledger.as_dict()
        report.predicted_gpu_mb = report.device_memory["predicted_peak_mb"]
    if labels.shape != geometry.shape or labels.dtype != np.uint8:
        raise RuntimeError(f"segmenter returned {labels.dtype} {labels.shape}, expected uint8 {geometry.shape}")
    report.labels_present = [int(v) for v in np.unique(labels) if v]
    report.details = dict(getattr(segmenter, "last_case_info", None) or {}) or None
    return labels


def write_nifti(case: Case, output_dir: Path, labels: np.ndarray, geometry: Geometry, report: CaseReport) -> None:
    output = case.output_path(output_dir)
    write_labels(output, labels, geometry)
    report.output = str(output)


def _write(write_outputs, case: Case, output_dir: Path, labels: np.ndarray, geometry: Geometry,
           report: CaseReport) -> None:
    start = time.perf_counter()
    write_outputs(case, output_dir, labels, geometry, report)
    report.seconds["write"] = time.perf_counter() - start


def _finish_write(future: Future, report: CaseReport) -> None:
    try:
        future.result()
        report.status = "ok"
    except Exception as error:
        report.error = f"writing failed: {_describe(error)}"
        log.error("%s: %s", report.case_id, report.error)
