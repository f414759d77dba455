"""DICOM folders as users have them: which series is the CT volume, and is its slice stack regular?

A study export holds a localizer, the CT volume, often a second reconstruction (bone kernel, thin
slices, a coronal reformat) and sometimes dose reports. The CT volume is chosen by explicit rules,
each applied in turn to the series still in the running (`choose_series`):

1. a volume: ImageType without LOCALIZER, at least 2 slices or frames (required);
2. no other modality: CT, OT ("other", what converters write) or none stated (preferred);
3. Modality CT (preferred);
4. axial: slice normal within 30 degrees of the patient's head-feet axis (preferred);
5. a regular slice stack (`stack_problems` finds none) (preferred);
6. most slices, then the lowest SeriesNumber, then the UID.

A required rule that leaves nothing is an error naming every series; a preferred one that leaves
nothing is skipped (a folder holding only an MR series yields it, and `inference.io.ct_check` then
refuses it as not CT unless --assume-ct). The choice and every series' fate go to the run report.

A slice stack with a missing slice, uneven spacing, repeated positions or gantry tilt is refused
with the geometry stated, never read: ITK's series reader takes the spacing of the first two
slices and ignores the shear of a tilted stack, so such a series would be silently misplaced.
Refusing (rather than resampling onto a regular grid) is deliberate: interpolating across a gap
invents anatomy where a lesion may be, and the user can pick another series (`--series`) or
convert the stack with a tool that corrects tilt.

Headers are read with SimpleITK (GDCM), one file at a time, without pixel data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

MODALITY, IMAGE_TYPE, SERIES_UID = "0008|0060", "0008|0008", "0020|000e"
SERIES_NUMBER, DESCRIPTION = "0020|0011", "0008|103e"
POSITION, ORIENTATION = "0020|0032", "0020|0037"
RESCALE_INTERCEPT, RESCALE_SLOPE = "0028|1052", "0028|1053"
NUMBER_OF_FRAMES = "0028|0008"  # an enhanced (multi-frame) CT holds its whole volume in one file
UNSTATED_MODALITIES = ("", "OT")  # the values then decide (inference.io.ct_check)
AXIAL_MAX_DEGREES = 30.0
TILT_MAX_DEGREES = 0.5  # in-plane drift per step over the step, as an angle
SPACING_TOLERANCE = 0.01  # relative difference of a step from the median step
POSITION_TOLERANCE_MM = 0.01  # DICOM positions are decimal strings rounded to about this


class SeriesError(ValueError):
    """No usable CT series in a folder, or a series whose slice stack cannot be placed."""


@dataclass(frozen=True)
class SeriesInfo:
    uid: str
    files: tuple[str, ...]  # sorted along the slice normal
    modality: str
    image_type: str
    description: str
    number: int | None
    orientation: tuple[float, ...] | None  # row and column direction cosines
    positions: tuple[tuple[float, float, float], ...]  # per file, same order as files
    rescale_intercept: float | None
    frames: int = 1  # frames in the first file

    @property
    def is_volume(self) -> bool:
        return not self.is_localizer and (len(self.files) >= 2 or self.frames >= 2)

    @property
    def normal(self) -> np.ndarray | None:
        if self.orientation is None:
            return None
        row, column = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        return np.cross(row, column)

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type.upper()

    @property
    def is_axial(self) -> bool:
        normal = self.normal
        return normal is not None and abs(float(normal[2])) >= math.cos(math.radians(AXIAL_MAX_DEGREES))

    def summary(self) -> dict:
        return {"uid": self.uid, "number": self.number, "description": self.description,
                "modality": self.modality, "image_type": self.image_type, "slices": len(self.files),
                "frames": self.frames, "axial": self.is_axial}


def _tag(reader: sitk.ImageFileReader, tag: str) -> str:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(" ", "").split("\\") if v)
    except ValueError:
        return ()


def read_series_info(folder: Path, uid: str) -> SeriesInfo:
    """Headers of one series (no pixel data), files sorted along the slice normal."""
    reader = sitk.ImageFileReader()
    first, slices = {}, []
    for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid):
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not first:
            first = {tag: _tag(reader, tag) for tag in (MODALITY, IMAGE_TYPE, DESCRIPTION, SERIES_NUMBER,
                                                         RESCALE_INTERCEPT, ORIENTATION, NUMBER_OF_FRAMES)}
        slices.append((name, _floats(_tag(reader, POSITION)), _floats(_tag(reader, ORIENTATION))))
    orientation = _floats(first.get(ORIENTATION, ""))
    orientation = orientation if len(orientation) == 6 else None
    consistent = orientation is not None and all(np.allclose(o, orientation, atol=1e-4) for _, _, o in slices)
    placed = consistent and all(len(p) == 3 for _, p, _ in slices)
    if placed:
        normal = np.cross(orientation[:3], orientation[3:])
        slices.sort(key=lambda s: float(np.dot(s[1], normal)))
    number, intercept = _floats(first.get(SERIES_NUMBER, "")), _floats(first.get(RESCALE_INTERCEPT, ""))
    frames = _floats(first.get(NUMBER_OF_FRAMES, ""))
    return SeriesInfo(
        uid=uid, files=tuple(s[0] for s in slices), modality=first.get(MODALITY, "").upper(),
        image_type=first.get(IMAGE_TYPE, ""), description=first.get(DESCRIPTION, ""),
        number=int(number[0]) if number else None, orientation=orientation if consistent else None,
        positions=tuple(tuple(s[1]) for s in slices) if placed else (),
        rescale_intercept=intercept[0] if intercept else None, frames=int(frames[0]) if frames else 1)


def list_series(folder) -> list[SeriesInfo]:
    folder = Path(folder)
    return [read_series_info(folder, uid) for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))]


def stack_problems(series: SeriesInfo) -> list[str]:
    """Why the slices cannot be read as a regular grid (empty: they can). A single file (one
    slice, or a multi-frame volume that GDCM places frame by frame) has nothing to check here."""
    if len(series.files) < 2:
        return []
    if series.orientation is None or len(series.positions) != len(series.files):
        return ["slices without ImagePositionPatient/ImageOrientationPatient, or with differing orientations"]
    normal = series.normal
    positions = np.asarray(series.positions, dtype=np.float64)
    steps_along = np.diff(positions @ normal)
    if np.any(steps_along < POSITION_TOLERANCE_MM):
        at = positions[1:][steps_along < POSITION_TOLERANCE_MM][0] @ normal
        return [f"two slices at the same position ({at:.2f} mm along the slice normal)"]
    median = float(np.median(steps_along))
    problems = []
    gaps = np.flatnonzero(np.abs(steps_along - median) > max(SPACING_TOLERANCE * median, POSITION_TOLERANCE_MM))
    if gaps.size:
        worst = int(gaps[np.argmax(np.abs(steps_along[gaps] - median))])
        step = float(steps_along[worst])
        kind = (f"missing slice(s): a gap of {step:.2f} mm (about {step / median - 1:.0f} slice(s)) after slice {worst}"
                if step > 1.5 * median else f"uneven slice spacing: steps from {steps_along.min():.3f} to "
                f"{steps_along.max():.3f} mm")
        problems.append(f"{kind}, where the spacing is {median:.3f} mm")
    drift = np.diff(positions, axis=0) - np.outer(steps_along, normal)
    tilt = math.degrees(math.atan(float(np.max(np.linalg.norm(drift, axis=1) / steps_along))))
    if tilt > TILT_MAX_DEGREES:
        problems.append(f"gantry tilt of {tilt:.1f} degrees (each slice shifted in-plane by "
                        f"{float(np.max(np.linalg.norm(drift, axis=1))):.2f} mm)")
    return problems


# rule name, test, required
_RULES = (
    ("a volume (not a LOCALIZER, at least 2 slices or frames)", lambda s: s.is_volume, True),
    ("CT or of no stated modality", lambda s: s.modality == "CT" or s.modality in UNSTATED_MODALITIES, False),
    ("modality CT", lambda s: s.modality == "CT", False),
    ("axial", lambda s: s.is_axial, False),
    ("a regular slice stack", lambda s: not stack_problems(s), False),
)


def choose_series(series: list[SeriesInfo], uid: str | None = None) -> tuple[SeriesInfo, dict]:
    """The CT volume among `series` (or the one `uid` names) and a report of the choice."""
    if uid is not None:
        chosen = next((s for s in series if s.uid == uid), None)
        if chosen is None:
            raise SeriesError(f"no series {uid} here; series: {', '.join(s.uid for s in series) or 'none'}")
        return chosen, {"chosen": chosen.summary(), "rule": "--series", "series": [s.summary() for s in series]}
    running, fate = list(series), {}
    for name, test, required in _RULES:
        kept = [s for s in running if test(s)]
        if not kept and not required:
            continue
        for s in running:
            if s not in kept:
                fate[s.uid] = f"not {name}"
        if not kept:
            raise SeriesError(f"no series is {name}: " + "; ".join(_describe(s) for s in series))
        running = kept
    running.sort(key=lambda s: (-len(s.files), s.number if s.number is not None else math.inf, s.uid))
    for s in running[1:]:
        fate[s.uid] = f"fewer slices than {running[0].uid}" if len(s.files) < len(running[0].files) else "tie, later number/UID"
    report = {"chosen": running[0].summary(), "rule": ", ".join(r[0] for r in _RULES) + ", most slices",
              "series": [dict(s.summary(), passed_over=fate.get(s.uid)) for s in series]}
    return running[0], report


def ct_volume_series(series: list[SeriesInfo]) -> list[SeriesInfo]:
    """Every volume series of modality CT (or none stated): the cases of `--each-series`."""
    return [s for s in series if all(test(s) for _, test, _ in _RULES[:2])]


def _describe(s: SeriesInfo) -> str:
    return f"{s.uid} ({s.modality or 'no modality'}, {s.image_type or 'no ImageType'}, {len(s.files)} slice(s))"


def read_series(folder, uid: str | None = None) -> tuple[sitk.Image, SeriesInfo, dict]:
    """The chosen series as an image (rescale applied by GDCM), its headers and the choice report.

    Raises SeriesError for a folder without a usable CT series and for an irregular slice stack.
    """
    chosen, report = choose_series(list_series(folder), uid)
    problems = stack_problems(chosen)
    if problems:
        raise SeriesError(f"series {chosen.uid} ({len(chosen.files)} slices) cannot be placed on a regular grid: "
                          + "; ".join(problems))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    return reader.Execute(), chosen, report


def series_cases(cases: list, series_uid: str | None = None, each_series: bool = False) -> list:
    """`--series UID` (that series of every DICOM folder) or `--each-series` (one case per CT
    volume series of every DICOM folder, named <folder>_s<SeriesNumber>, or _<UID> where numbers
    repeat) applied to discovered cases; files are passed through."""
    from dataclasses import replace
    result = []
    for case in cases:
        if not Path(case.path).is_dir():
            result.append(case)
        elif series_uid is not None:
            result.append(replace(case, series_uid=series_uid))
        elif not each_series:
            result.append(case)
        else:
            volumes = ct_volume_series(list_series(case.path)) or [None]  # none: the read names the cause
            numbers = [s.number for s in volumes if s is not None]
            by_number = len(set(numbers)) == len(volumes) and None not in numbers
            for s in volumes:
                suffix = "" if s is None else (f"_s{s.number}" if by_number else f"_{s.uid}")
                result.append(replace(case, case_id=case.case_id + suffix, series_uid=s.uid if s else None))
    return result
