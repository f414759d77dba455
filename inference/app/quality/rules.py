"""Quality rules: pure functions on a case's measurements, each returning the flags it raises.

Every flag names its rule, what it is about, the measured value and the reference it was
compared with (references.py cites the sources).

Partial field of view: an organ that reaches the first or last slice along the head-feet axis,
or the in-plane edge of the field of view, is only partly imaged, so the rules that a too-small
volume would trip (absolute adult volume low, share of the body low, kidney asymmetry) skip it;
rules that too much or misplaced tissue trips still apply. "Missing" rules only expect an organ
when its anchor organs lie wholly inside the field of view (references.py says where each lies).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from inference.app.quality import references as ref
from inference.app.quality.measure import Body, OrganMeasure
from inference.app.volumes import NO_HOST
from inference.core.labels import LABEL_NAMES

LABEL_OF = {name: label for label, name in LABEL_NAMES.items()}


@dataclass(frozen=True)
class Flag:
    rule: str
    subject: str  # an organ name, a pair "right/left", "tumor" or "case"
    value: float
    unit: str
    reference: str

    def describe(self) -> str:
        return f"{self.rule} ({self.subject}: {self.value:.4g} {self.unit}; reference {self.reference})"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CaseMeasures:
    organs: dict[int, OrganMeasure]  # labels present, tumour included
    body: Body
    fov_mm: float  # length of the field of view along the head-feet axis
    tumor_by_host: dict[str, dict]  # inference.report volume_report()["tumor"]["by_host"]


def is_partial(organ: OrganMeasure) -> bool:
    return organ.touches_slice_ends or organ.touches_in_plane_edge


def _name(label: int) -> str:
    return LABEL_NAMES[label]


def organ_with_tumor_ml(case: CaseMeasures, label: int) -> float:
    """An organ's volume with the tumour it hosts: a kidney with a tumour is that big a kidney."""
    hosted = case.tumor_by_host.get(_name(label), {}).get("volume_ml", 0.0)
    return case.organs[label].volume_ml + hosted


def adult_volume(case: CaseMeasures) -> list[Flag]:
    """Absolute organ volumes against adult ranges, only for an adult-sized body."""
    if case.body.width_mm < ref.ADULT_BODY_WIDTH_MM:
        return []
    flags = []
    for label, band in ref.ADULT_VOLUME_L.items():
        organ = case.organs.get(label)
        if organ is None:
            continue
        litres = organ_with_tumor_ml(case, label) / 1000.0
        if litres > band.high:
            flags.append(Flag("volume_above_adult_range", _name(label), litres, "L", band.describe()))
        elif litres < band.low and not is_partial(organ):
            flags.append(Flag("volume_below_adult_range", _name(label), litres, "L", band.describe()))
    return flags


def body_share(case: CaseMeasures) -> list[Flag]:
    """Organ volume as a share of the body volume in the slices it spans (any body size)."""
    flags = []
    for label, band in ref.BODY_SHARE.items():
        organ = case.organs.get(label)
        if organ is None or organ.body_slab_ml <= 0:
            continue
        share = organ_with_tumor_ml(case, label) / organ.body_slab_ml
        if share > band.high:
            flags.append(Flag("volume_high_for_body", _name(label), share, band.unit, f"{band.low:g}-{band.high:g}"))
        elif share < band.low and not is_partial(organ):
            flags.append(Flag("volume_low_for_body", _name(label), share, band.unit, f"{band.low:g}-{band.high:g}"))
    return flags


def kidney_asymmetry(case: CaseMeasures) -> list[Flag]:
    kidneys = [case.organs.get(label) for label in ref.KIDNEYS]
    if any(k is None or is_partial(k) for k in kidneys):
        return []
    volumes = [organ_with_tumor_ml(case, label) for label in ref.KIDNEYS]
    ratio = max(volumes) / min(volumes)
    if ratio <= ref.KIDNEY_RATIO_MAX:
        return []
    return [Flag("kidney_volume_ratio", "right_kidney/left_kidney", ratio, "larger/smaller",
                 f"<= {ref.KIDNEY_RATIO_MAX:g} (Cho 2024: median 1.08)")]


def _whole(case: CaseMeasures, label: int) -> bool:
    organ = case.organs.get(label)
    return organ is not None and not organ.touches_slice_ends


def expected_organs(case: CaseMeasures) -> dict[int, str]:
    """Organs the field of view must hold given where the other organs lie, with the reason."""
    expected: dict[int, str] = {}
    organs, whole = case.organs, (lambda label: _whole(case, label))
    if whole(ref.RIGHT_KIDNEY) and whole(ref.LEFT_KIDNEY):
        expected[ref.PANCREAS] = "both kidneys wholly in the field of view"
    for adrenal, kidney in ((ref.RIGHT_ADRENAL, ref.RIGHT_KIDNEY), (ref.LEFT_ADRENAL, ref.LEFT_KIDNEY)):
        if whole(kidney) and case.fov_mm - organs[kidney].top_mm >= ref.ADRENAL_ABOVE_KIDNEY_MM:
            expected[adrenal] = f"field of view reaches >= {ref.ADRENAL_ABOVE_KIDNEY_MM:g} mm above the {_name(kidney)}"
    for organ, anchor in ((ref.LIVER, ref.RIGHT_KIDNEY), (ref.SPLEEN, ref.LEFT_KIDNEY),
                          (ref.LEFT_KIDNEY, ref.RIGHT_KIDNEY), (ref.RIGHT_KIDNEY, ref.LEFT_KIDNEY),
                          (ref.DUODENUM, ref.PANCREAS)):
        if whole(anchor):
            expected[organ] = f"{_name(anchor)} wholly in the field of view"
    if ref.SPLEEN in organs:
        expected[ref.STOMACH] = "spleen in the field of view"
    if any(k in organs for k in ref.KIDNEYS):
        expected[ref.AORTA] = expected[ref.IVC] = "a kidney in the field of view"
    if whole(ref.LIVER) and case.fov_mm - organs[ref.LIVER].top_mm >= ref.ESOPHAGUS_ABOVE_LIVER_MM:
        expected[ref.ESOPHAGUS] = f"field of view reaches >= {ref.ESOPHAGUS_ABOVE_LIVER_MM:g} mm above the liver"
    return expected


def missing_in_fov(case: CaseMeasures) -> list[Flag]:
    if not any(label <= 13 for label in case.organs):
        if case.body.volume_ml > 0:
            return [Flag("no_organ_segmented", "case", case.body.volume_ml, "mL of body", "13 organs")]
        return []
    return [Flag("missing_in_fov", _name(label), 0.0, "mL", reason)
            for label, reason in sorted(expected_organs(case).items()) if label not in case.organs]


def fragmented(case: CaseMeasures) -> list[Flag]:
    flags = []
    for label, organ in sorted(case.organs.items()):
        if label == ref.TUMOR:
            continue
        limit = ref.MAX_PIECES_TUBULAR if label in ref.TUBULAR else ref.MAX_PIECES
        if organ.pieces > limit:
            flags.append(Flag("fragmented", _name(label), organ.pieces, "pieces",
                              f"<= {limit} pieces holding >= 10% of the largest"))
    return flags


def outside_body(case: CaseMeasures) -> list[Flag]:
    return [Flag("outside_body", _name(label), organ.outside_body_share, "share of voxels",
                 f"<= {ref.MAX_OUTSIDE_BODY_SHARE:g}")
            for label, organ in sorted(case.organs.items())
            if organ.outside_body_share > ref.MAX_OUTSIDE_BODY_SHARE]


def wrong_side(case: CaseMeasures) -> list[Flag]:
    """Right organs lie to the patient's right of their left partners (LPS: smaller x), one-sided
    organs on their side of the body midline, the pancreas between the kidneys."""
    flags, organs = [], case.organs
    for right, left in ((ref.RIGHT_KIDNEY, ref.LEFT_KIDNEY), (ref.RIGHT_ADRENAL, ref.LEFT_ADRENAL),
                        (ref.LIVER, ref.SPLEEN)):
        if right in organs and left in organs:
            offset = organs[left].centroid_lps[0] - organs[right].centroid_lps[0]
            if offset <= 0:
                flags.append(Flag("left_right_swapped", f"{_name(right)}/{_name(left)}", offset,
                                  "mm (left minus right centroid, + = patient's left)", "> 0 mm"))
    for label, side in ref.SIDE_OF_MIDLINE.items():
        if label in organs:
            offset = organs[label].centroid_lps[0] - case.body.centre_x_mm
            if offset * side <= 0:
                flags.append(Flag("wrong_side_of_midline", _name(label), offset,
                                  "mm from body midline (+ = patient's left)", "< 0 mm" if side < 0 else "> 0 mm"))
    kidneys = [organs[k].centroid_lps[0] for k in ref.KIDNEYS if k in organs]
    if ref.PANCREAS in organs and len(kidneys) == 2:
        x = organs[ref.PANCREAS].centroid_lps[0]
        if not kidneys[0] < x < kidneys[1]:
            flags.append(Flag("not_between_kidneys", _name(ref.PANCREAS), x - case.body.centre_x_mm,
                              "mm from body midline (+ = patient's left)",
                              f"between the kidneys ({kidneys[0] - case.body.centre_x_mm:.0f} to "
                              f"{kidneys[1] - case.body.centre_x_mm:.0f} mm)"))
    return flags


def tumor_rules(case: CaseMeasures, organ_flags: list[Flag]) -> list[Flag]:
    """Tumour count and burden per host organ, and tumours in an organ that is itself flagged."""
    flagged_organs = {part for flag in organ_flags for part in flag.subject.split("/")}
    flags = []
    for host, entry in sorted(case.tumor_by_host.items()):
        label = LABEL_OF.get(host)
        limit = ref.MAX_TUMORS_PER_HOST.get(label, ref.MAX_TUMORS_DEFAULT)
        if entry["components"] > limit:
            flags.append(Flag("tumor_count", host, entry["components"], "lesions", f"<= {limit}"))
        organ = case.organs.get(label) if label is not None else None
        if organ is not None:
            share = entry["volume_ml"] / (entry["volume_ml"] + organ.volume_ml)
            if share > ref.MAX_TUMOR_SHARE_OF_HOST:
                flags.append(Flag("tumor_burden", host, share, "tumour share of the organ",
                                  f"<= {ref.MAX_TUMOR_SHARE_OF_HOST:g}"))
        if host == NO_HOST or host in flagged_organs:
            reason = "touches no organ" if host == NO_HOST else "the organ is itself flagged"
            flags.append(Flag("tumor_in_implausible_organ", host, entry["volume_ml"], "mL of tumour", reason))
    return flags


ORGAN_RULES = (adult_volume, body_share, kidney_asymmetry, missing_in_fov, fragmented, outside_body, wrong_side)


def run_rules(case: CaseMeasures) -> list[Flag]:
    organ_flags = [flag for rule in ORGAN_RULES for flag in rule(case)]
    return organ_flags + tumor_rules(case, organ_flags)
