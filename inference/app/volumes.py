"""Clinical volume report of one label map: organ volumes and tumor burden per host organ.

Pure functions on (labels, Geometry); no plotting. The label names come from `inference.core.labels`.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

from inference.core.geometry import Geometry
from inference.core.labels import LABEL_NAMES, ORGAN_LABELS, TUMOR_LABEL
from inference.io.images import write_text_atomic

NO_HOST = "none"  # a tumor component touching no organ
CONNECTIVITY = 26  # tumor components, and the 1-voxel neighbourhood used to find their host
MM3_PER_ML = 1000.0


def volume_report(labels: np.ndarray, geometry: Geometry) -> dict:
    """Organ volumes (mL, every organ listed, 0 when absent) and tumor components by host organ.

    A tumor component's host is the organ label with the most voxels in the component's 1-voxel
    (26-neighbourhood) dilation; ties go to the lower label, no organ neighbour gives "none".
    """
    labels = np.asarray(labels)
    if labels.shape != geometry.shape:
        raise ValueError(f"labels shape {labels.shape} does not match geometry shape {geometry.shape}")
    voxel_ml = float(np.prod(geometry.spacing)) / MM3_PER_ML
    counts = label_counts(labels)
    lesions = _tumor_lesions(labels, voxel_ml)
    by_host: dict[str, dict] = {}
    for lesion in lesions:
        entry = by_host.setdefault(lesion["host"], {"components": 0, "volume_ml": 0.0})
        entry["components"] += 1
        entry["volume_ml"] += lesion["volume_ml"]
    return {
        "spacing_mm": list(geometry.spacing),
        "voxel_volume_ml": voxel_ml,
        "organs_ml": {LABEL_NAMES[label]: float(counts[label]) * voxel_ml for label in ORGAN_LABELS},
        "tumor": {
            "components": len(lesions),
            "volume_ml": float(counts[TUMOR_LABEL]) * voxel_ml,
            "by_host": dict(sorted(by_host.items())),
            "lesions": lesions,
        },
    }


def label_counts(labels: np.ndarray, slab: int = 16) -> np.ndarray:
    """Voxels per label value 0..14 (at least), counted slab by slab: bincount converts its input
    to 64-bit integers, which for a whole 512x512x300 scan would be a 600 MB copy."""
    counts = np.zeros(TUMOR_LABEL + 1, dtype=np.int64)
    for start in range(0, labels.shape[0], slab):
        part = np.bincount(labels[start:start + slab].ravel(), minlength=TUMOR_LABEL + 1)
        if part.size > counts.size:
            counts = np.pad(counts, (0, part.size - counts.size))
        counts[:part.size] += part
    return counts


def tumor_components(labels: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]] | None:
    """Connected tumor components (cc3d, 26-connected) within the tumor's bounding box grown by
    one voxel, and that box; None without tumor. Cropping keeps cc3d's 32-bit output small."""
    tumor = labels == TUMOR_LABEL
    box = []
    for axis in range(labels.ndim):
        present = np.flatnonzero(tumor.any(axis=tuple(a for a in range(labels.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, labels.shape[axis])))
    box = tuple(box)
    return cc3d.connected_components(tumor[box], connectivity=CONNECTIVITY), box


def _tumor_lesions(labels: np.ndarray, voxel_ml: float) -> list[dict]:
    """One entry per tumor component, largest first: volume, voxel count and host organ."""
    found = tumor_components(labels)
    if found is None:
        return []
    components, tumor_box = found
    labels = labels[tumor_box]  # the grown box holds every voxel a 1-voxel dilation can reach
    stats = cc3d.statistics(components)
    cube = np.ones((3, 3, 3), dtype=bool)
    lesions = []
    for index in range(1, len(stats["voxel_counts"])):
        count = int(stats["voxel_counts"][index])
        if count == 0:
            continue
        # Work on the component's box grown by one voxel: the dilation cannot reach further.
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n))
                    for s, n in zip(stats["bounding_boxes"][index], labels.shape))
        component = components[box] == index
        neighbourhood = ndimage.binary_dilation(component, structure=cube) & ~component
        organ_counts = np.bincount(labels[box][neighbourhood], minlength=TUMOR_LABEL + 1)
        organ_counts = organ_counts[list(ORGAN_LABELS)]
        host = LABEL_NAMES[ORGAN_LABELS[int(np.argmax(organ_counts))]] if organ_counts.max() > 0 else NO_HOST
        lesions.append({"voxels": count, "volume_ml": count * voxel_ml, "host": host})
    return sorted(lesions, key=lambda lesion: -lesion["voxels"])


def write_volume_report_json(path, report: dict) -> None:
    """One case's report as indented JSON (written to a temporary file, then renamed)."""
    write_text_atomic(Path(path), json.dumps(report, indent=2) + "\n")


REPORT_CSV_COLUMNS = ("case", "kind", "name", "volume_ml", "components")


def write_volume_reports_csv(path, reports: dict[str, dict]) -> None:
    """Long-form CSV of many cases: one row per organ, one for the tumor total, one per host.

    kind is "organ", "tumor" (all tumor of the case), "tumor_host" (name is the host organ) or
    "quality_flag" (name is rule:subject, the measured value and reference are in the JSON);
    components is empty for organs, volume_ml and components for flags.
    """
    rows = []
    for case_id, report in reports.items():
        for name, volume in report["organs_ml"].items():
            rows.append((case_id, "organ", name, volume, ""))
        tumor = report["tumor"]
        rows.append((case_id, "tumor", LABEL_NAMES[TUMOR_LABEL], tumor["volume_ml"], tumor["components"]))
        for host, entry in tumor["by_host"].items():
            rows.append((case_id, "tumor_host", host, entry["volume_ml"], entry["components"]))
        for flag in (report.get("quality") or {}).get("flags", []):
            rows.append((case_id, "quality_flag", f"{flag['rule']}:{flag['subject']}", None, ""))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_CSV_COLUMNS)
    for case_id, kind, name, volume, components in rows:
        writer.writerow((case_id, kind, name, "" if volume is None else f"{volume:.4f}", components))
    write_text_atomic(Path(path), buffer.getvalue())
