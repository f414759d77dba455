"""Is this scan a CT in HU, a CT stored without its rescale intercept, or not a CT at all?

Decided from the header when it says (DICOM Modality) and otherwise from the values: the share of
voxels in the ranges every abdominal CT holds. A CT of a body is mostly fat and soft tissue
(-200..300 HU: 90 % of the body voxels of the real CT in ../shared/data/real), holds air or fat
(below -30 HU: outside the body, lungs, bowel gas, subcutaneous fat) and little bone or contrast
(300..3100 HU). An image scaled to 0..1, a z-scored image or an MR volume fails at least one of
these under both readings, as stored and shifted by -1024 HU, and is refused instead of being
segmented as if it were CT.

Pure functions on arrays and a small header dict; reading lives in `inference.io.ct_input`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# CT stored without its rescale intercept (uint16 0..4095 with air near 24): HU = stored - 1024.
UNSHIFTED_CT_OFFSET = -1024.0
PADDING_BELOW_HU = -1100.0  # scanner padding (-3024, -32768): outside the field of view, not tissue
AIR_BELOW_HU = -900.0  # air and lung; above it is the body
FAT_OR_AIR_BELOW_HU = -30.0
SOFT_TISSUE_HU = (-200.0, 300.0)  # fat, water, organs, muscle, enhanced vessels
BONE_TOP_HU = 3100.0  # above: metal or not HU
MIN_SOFT_TISSUE_SHARE = 0.5  # of body voxels (real CT: 0.90; chest CT with lungs: about 0.6)
MAX_BONE_SHARE = 0.35  # of body voxels (real CT: 0.015; bone-heavy pelvis slabs: about 0.15)
MIN_FAT_OR_AIR_SHARE = 0.005  # of voxels in the field of view
MAX_ABOVE_BONE_SHARE = 0.01  # metal implants are small
MIN_VALUE_SPREAD = 100.0  # p99.5 - p0.5: air to tissue is 1000 HU, tissue noise alone 20 HU
SAMPLE_VOXELS = 2_000_000  # a strided sample decides as well as all voxels, in milliseconds


class NotCTError(ValueError):
    """The scan's values (or header) say it is not a CT; the message says what was seen."""


@dataclass(frozen=True)
class HUProfile:
    """Shares of voxels in the HU classes under one reading (values + offset)."""
    offset: float
    field_of_view: int  # voxels not below PADDING_BELOW_HU
    fat_or_air: float  # share of the field of view below -30 HU
    body: float  # share of the field of view above -900 HU
    soft_tissue: float  # share of the body in -200..300 HU
    bone: float  # share of the body in 300..3100 HU
    above_bone: float  # share of the field of view above 3100 HU

    def failures(self) -> list[str]:
        """Why this reading is not a CT of a body (empty: it is one)."""
        found = []
        if self.field_of_view == 0:
            return ["every voxel below -1100 HU (padding)"]
        if self.body == 0:
            return ["no voxel above -900 HU (no body)"]
        if self.soft_tissue < MIN_SOFT_TISSUE_SHARE:
            found.append(f"{self.soft_tissue:.0%} of the body in -200..300 HU (fat, soft tissue), "
                         f"expected at least {MIN_SOFT_TISSUE_SHARE:.0%}")
        if self.bone > MAX_BONE_SHARE:
            found.append(f"{self.bone:.0%} of the body in 300..3100 HU (bone), expected at most {MAX_BONE_SHARE:.0%}")
        if self.fat_or_air < MIN_FAT_OR_AIR_SHARE:
            found.append(f"{self.fat_or_air:.1%} below -30 HU (air, fat), expected at least {MIN_FAT_OR_AIR_SHARE:.1%}")
        if self.above_bone > MAX_ABOVE_BONE_SHARE:
            found.append(f"{self.above_bone:.1%} above 3100 HU")
        return found

    def as_dict(self) -> dict:
        return {"offset": self.offset, "fat_or_air": round(self.fat_or_air, 4), "body": round(self.body, 4),
                "soft_tissue": round(self.soft_tissue, 4), "bone": round(self.bone, 4),
                "above_bone": round(self.above_bone, 5)}


@dataclass(frozen=True)
class CTVerdict:
    """What the scan is taken to be and the offset that turns its values into HU."""
    kind: str  # "hu", "unshifted" (stored without its intercept) or "assumed" (--assume-ct)
    offset: float
    reason: str
    profile: HUProfile | None = None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "offset": self.offset, "reason": self.reason,
                "profile": self.profile.as_dict() if self.profile else None}


def value_sample(values: np.ndarray, voxels: int = SAMPLE_VOXELS) -> np.ndarray:
    """Every n-th voxel, at most about `voxels` of them (a view for contiguous arrays)."""
    flat = np.asarray(values).reshape(-1)
    return flat[:: max(1, flat.size // voxels)]


def hu_profile(sample: np.ndarray, offset: float) -> HUProfile:
    hu = sample.astype(np.float32) + np.float32(offset)
    in_view = hu[hu >= PADDING_BELOW_HU]
    body = in_view[in_view > AIR_BELOW_HU]
    n_view, n_body = max(in_view.size, 1), max(body.size, 1)
    low, high = SOFT_TISSUE_HU
    return HUProfile(
        offset=offset, field_of_view=int(in_view.size),
        fat_or_air=float(np.count_nonzero(in_view < FAT_OR_AIR_BELOW_HU)) / n_view,
        body=float(body.size) / n_view,
        soft_tissue=float(np.count_nonzero((body >= low) & (body <= high))) / n_body,
        bone=float(np.count_nonzero((body > high) & (body <= BONE_TOP_HU))) / n_body,
        above_bone=float(np.count_nonzero(in_view > BONE_TOP_HU)) / n_view)


def classify_ct(values: np.ndarray, header: dict | None = None, assume_ct: bool = False) -> CTVerdict:
    """The reading under which `values` are HU, or NotCTError naming what was seen.

    Header keys used (all optional): "modality" (DICOM 0008|0060), "rescale_intercept" (DICOM
    0028|1052, already applied by the reader), "pixel_type" (as stored, for the message).
    Rules, in order: a DICOM Modality other than CT is not CT; a DICOM CT with a non-zero rescale
    intercept is in HU (the reader applied it); a scan of air only (-1100..-900, HU's own values) is
    CT with nothing to segment; values spread over less than 100 units are no CT;
    the values as stored, then shifted by -1024, are tried against `HUProfile`; a DICOM CT whose
    values fit neither is taken as stored when some voxel is below 0, else shifted. `assume_ct`
    turns a refusal into the old rule (no voxel below 0: shifted) and says so.
    """
    header = header or {}
    sample = value_sample(values)
    low = float(sample.min()) if sample.size else 0.0
    modality = str(header.get("modality") or "").strip().upper()
    modality = "" if modality == "OT" else modality  # "other": converters write it; the values decide
    try:
        return _classify(sample, low, modality, header)
    except NotCTError as error:
        if not assume_ct:
            raise
        offset = UNSHIFTED_CT_OFFSET if low >= 0 else 0.0
        return CTVerdict("assumed", offset, f"--assume-ct although {error}")


def _classify(sample: np.ndarray, low: float, modality: str, header: dict) -> CTVerdict:
    if modality and modality != "CT":
        raise NotCTError(f"DICOM Modality is {modality}, not CT")
    if modality == "CT" and header.get("rescale_intercept"):
        return CTVerdict("hu", 0.0, f"DICOM CT with rescale intercept {header['rescale_intercept']:g}: values in HU")
    seen = _describe_values(sample, header)
    if sample.size == 0:
        raise NotCTError("no voxels")
    as_stored = hu_profile(sample, 0.0)
    if as_stored.field_of_view and as_stored.body == 0:  # -1000 is HU's own value for air: nothing to segment
        return CTVerdict("hu", 0.0, "air only (every voxel in the field of view at or below -900 HU)", as_stored)
    spread = float(np.percentile(sample, 99.5) - np.percentile(sample, 0.5))
    if spread < MIN_VALUE_SPREAD and not modality:
        raise NotCTError(f"{seen}: values spread over {spread:.3g} units (0.5-99.5 percentiles), "
                         f"a CT of a body spans at least {MIN_VALUE_SPREAD:g} HU")
    if not as_stored.failures():
        return CTVerdict("hu", 0.0, "values fit CT in HU", as_stored)
    shifted = hu_profile(sample, UNSHIFTED_CT_OFFSET)
    if low >= 0 and not shifted.failures():
        return CTVerdict("unshifted", UNSHIFTED_CT_OFFSET,
                         f"no voxel below 0 and the values fit CT stored without its intercept "
                         f"(shifted by {UNSHIFTED_CT_OFFSET:g})", shifted)
    if modality == "CT":
        offset = UNSHIFTED_CT_OFFSET if low >= 0 else 0.0
        return CTVerdict("hu" if offset == 0 else "unshifted", offset,
                         "DICOM Modality CT" + ("" if offset == 0 else f", no voxel below 0: shifted by {offset:g}"),
                         as_stored if offset == 0 else shifted)
    reasons = "; ".join(as_stored.failures())
    if low >= 0:
        reasons = f"as stored: {reasons}; shifted by {UNSHIFTED_CT_OFFSET:g}: {'; '.join(shifted.failures())}"
    raise NotCTError(f"{seen}: {reasons}")


def _describe_values(sample: np.ndarray, header: dict) -> str:
    stored = f"{header['pixel_type']} " if header.get("pixel_type") else ""
    low, high = (float(sample.min()), float(sample.max())) if sample.size else (0.0, 0.0)
    return f"{stored}values {low:.4g}..{high:.4g}"
