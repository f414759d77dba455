"""One case's quality report: measure the label map and the body outline, run every rule."""
from __future__ import annotations

import logging

import numpy as np

from inference.core.choices import QA_MODES
from inference.core.geometry import Geometry
from inference.app.quality import references as ref
from inference.app.quality.measure import body_outline, fov_length_mm, measure_labels
from inference.app.quality.rules import CaseMeasures, is_partial, run_rules
from inference.app.volumes import volume_report
from inference.core.labels import LABEL_NAMES

log = logging.getLogger(__name__)
__all__ = ["QA_MODES", "apply_qa_mode", "check_quality", "warning_line"]


def check_quality(labels: np.ndarray, image: np.ndarray, geometry: Geometry, volumes: dict | None = None) -> dict:
    """Quality report of one case: {"flagged", "flags", "body", "partial_organs"}.

    `image` is the scan in HU (for the body outline); `volumes` is the case's volume_report when
    already computed (its tumour components are reused).
    """
    labels = np.asarray(labels)
    if labels.shape != geometry.shape or np.shape(image) != geometry.shape:
        raise ValueError(f"labels {labels.shape} and image {np.shape(image)} must have the geometry's shape {geometry.shape}")
    body = body_outline(image, geometry)
    organs = measure_labels(labels, geometry, body)
    tumor = (volumes or volume_report(labels, geometry))["tumor"]
    case = CaseMeasures(organs, body, fov_length_mm(geometry), tumor["by_host"])
    flags = run_rules(case)
    return {
        "flagged": bool(flags),
        "flags": [flag.as_dict() | {"message": flag.describe()} for flag in flags],
        "body": {"volume_ml": round(body.volume_ml, 1), "width_mm": round(body.width_mm, 1),
                 "adult_sized": body.width_mm >= ref.ADULT_BODY_WIDTH_MM},
        "partial_organs": [LABEL_NAMES.get(label, str(label)) for label, organ in sorted(organs.items())
                           if label != ref.TUMOR and is_partial(organ)],
    }


def warning_line(case_id: str, quality: dict) -> str:
    """One line naming every flag of a case, for the log."""
    return f"{case_id}: {len(quality['flags'])} quality flag(s): " + "; ".join(f["message"] for f in quality["flags"])


def apply_qa_mode(reports, mode: str) -> None:
    """report: one warning line per flagged case; strict: flagged cases fail with that line as
    their error (their files stay written, for review); off: nothing."""
    for report in reports:
        quality = report.quality
        if mode == "off" or report.status != "ok" or not quality or not quality["flagged"]:
            continue
        line = warning_line(report.case_id, quality)
        if mode == "strict":
            report.status, report.error = "failed", f"quality check (--qa strict): {line}"
        else:
            log.warning("QUALITY %s", line)
