"""A scan as the cascade needs it: read, checked to be CT, in HU; and what was decided on the way.

A file is read whole; a DICOM folder through `inference.io.dicom_series` (the CT volume series, or
the one asked for). `inference.io.ct_check` then decides from the values and the header whether the
scan is CT in HU, CT stored without its intercept (shifted by -1024 HU, with a warning) or not CT
(an InputError naming what was seen, unless `assume_ct`). The returned `info` goes to the run
report: the CT verdict and, for DICOM, the series chosen among those in the folder.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from inference.io.ct_check import NotCTError, classify_ct
from inference.core.geometry import Geometry
from inference.io.images import InputError, image_array, read_dicom_folder, read_sitk

log = logging.getLogger(__name__)


def read_ct_scan(path, assume_ct: bool = False,
                 series_uid: str | None = None) -> tuple[np.ndarray, Geometry, dict]:
    """(float32 HU array, Geometry, info) of one scan; InputError for anything unusable."""
    path = Path(path)
    info: dict = {}
    if path.is_dir():
        image, series, choice = read_dicom_folder(path, series_uid)
        header = {"modality": series.modality, "rescale_intercept": series.rescale_intercept}
        info["dicom_series"] = choice
        if len(choice["series"]) > 1:
            log.info("%s: %d DICOM series, reading %s (%s, %d slices; rules: %s)", path, len(choice["series"]),
                     series.uid, series.description or "no description", len(series.files), choice["rule"])
    else:
        if series_uid is not None:
            raise InputError(path, f"--series {series_uid} names a DICOM series, but this is a single file")
        image, header = read_sitk(path), {}
    header["pixel_type"] = image.GetPixelIDTypeAsString()
    array, geometry = image_array(path, image)
    try:
        verdict = classify_ct(array, header, assume_ct)
    except NotCTError as error:
        raise InputError(path, f"not CT: {error} (--assume-ct segments it anyway)") from None
    if verdict.offset:
        log.warning("%s: %s: values %g..%g shifted by %g", path, verdict.reason, float(array.min()),
                    float(array.max()), verdict.offset)
        array += np.float32(verdict.offset)
    elif verdict.kind == "assumed":
        log.warning("%s: %s", path, verdict.reason)
    info["ct"] = verdict.as_dict()
    return array, geometry, info
