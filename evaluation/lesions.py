"""Lesion-wise tumour analysis: which true tumours were found, where the false ones lie.

The case-level tumour DSC of the FLARE metric says how much tumour volume overlaps, not why the rest
is missing. This table answers the questions behind a low DSC: were the missed tumours small, or in
one organ (a tumour model that never ran, e.g. the kidney models behind the contrast switch)? Are
the false positives inside an organ (the tumour model's errors) or outside every organ (crop
errors)?

- A true lesion is a 26-connected component of the ground truth's tumour label. Its host is the
  non-tumour ground-truth label most common in the one-voxel shell around it (tumour voxels carry
  the tumour label, not their organ's); 0 where only background touches it. It is detected when
  any predicted tumour voxel overlaps it; `found_fraction` is the overlapping share of its voxels.
- A false lesion is a 26-connected component of the predicted tumour label that overlaps no true
  tumour voxel; `host` is the ground-truth label most common inside it (0: outside every organ).

Components come from cc3d (connected-components-3d), the library the cascade itself uses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cc3d
import numpy as np
from scipy import ndimage

from inference.core.labels import TUMOR_LABEL

# volume classes of the summary (mm3): edges between "small", "medium" and "large"
SIZE_EDGES_MM3 = (100.0, 1000.0)
LESION_COLUMNS = ("case", "kind", "host", "volume_mm3", "found_fraction")


@dataclass(frozen=True)
class Lesion:
    case: str
    kind: str  # "true" (a ground-truth component) or "false" (a predicted component touching no truth)
    host: int
    volume_mm3: float
    found_fraction: float  # true lesions: share of voxels predicted as tumour; false lesions: 0

    @property
    def detected(self) -> bool:
        return self.kind == "true" and self.found_fraction > 0


def case_lesions(case_id: str, gt: np.ndarray, pred: np.ndarray, spacing, tumor_label: int = TUMOR_LABEL
                 ) -> list[Lesion]:
    """The true and false lesions of one case (label maps of equal shape, spacing in mm)."""
    if gt.shape != pred.shape:
        raise ValueError(f"case {case_id}: shapes differ: ground truth {gt.shape}, prediction {pred.shape}")
    voxel_mm3 = float(np.prod(spacing))
    truth, found = gt == tumor_label, pred == tumor_label
    lesions = []
    components, count = cc3d.connected_components(truth, connectivity=26, return_N=True)
    for index, box in enumerate(cc3d.statistics(components)["bounding_boxes"][1:count + 1], start=1):
        shell_box = _grown(box, components.shape)
        mask = components[shell_box] == index
        size = int(np.count_nonzero(mask))
        shell = _dilated(mask) & ~mask
        lesions.append(Lesion(case_id, "true", _most_common(gt[shell_box][shell], exclude=(0, tumor_label)),
                              size * voxel_mm3, float(np.count_nonzero(found[shell_box] & mask)) / size))
    components, count = cc3d.connected_components(found, connectivity=26, return_N=True)
    for index, box in enumerate(cc3d.statistics(components)["bounding_boxes"][1:count + 1], start=1):
        mask = components[box] == index
        if np.any(truth[box] & mask):
            continue
        lesions.append(Lesion(case_id, "false", _most_common(gt[box][mask], exclude=()),
                              int(np.count_nonzero(mask)) * voxel_mm3, 0.0))
    return lesions


def summarize_lesions(lesions: list[Lesion], label_names: dict[int, str] | None = None) -> dict:
    """Detection counts by host organ and by size class, and false lesions by where they lie."""
    names = label_names or {}
    name = lambda label: names.get(label, "background" if label == 0 else f"label_{label}")  # noqa: E731
    true = [lesion for lesion in lesions if lesion.kind == "true"]
    false = [lesion for lesion in lesions if lesion.kind == "false"]

    def counts(group: list[Lesion]) -> dict:
        return {"lesions": len(group), "detected": sum(lesion.detected for lesion in group),
                "volume_mm3": round(sum(lesion.volume_mm3 for lesion in group), 1),
                "found_volume_mm3": round(sum(lesion.volume_mm3 * lesion.found_fraction for lesion in group), 1)}

    by_host = {name(host): counts([lesion for lesion in true if lesion.host == host])
               for host in sorted({lesion.host for lesion in true})}
    small, large = SIZE_EDGES_MM3
    by_size = {f"< {small:g} mm3": counts([lesion for lesion in true if lesion.volume_mm3 < small]),
               f"{small:g}-{large:g} mm3": counts([lesion for lesion in true if small <= lesion.volume_mm3 < large]),
               f">= {large:g} mm3": counts([lesion for lesion in true if lesion.volume_mm3 >= large])}
    false_by_host = {}
    for lesion in false:
        entry = false_by_host.setdefault(name(lesion.host), {"lesions": 0, "volume_mm3": 0.0})
        entry["lesions"] += 1
        entry["volume_mm3"] = round(entry["volume_mm3"] + lesion.volume_mm3, 1)
    return {"true": counts(true), "by_host": by_host, "by_size": by_size,
            "false": {"lesions": len(false), "volume_mm3": round(sum(lesion.volume_mm3 for lesion in false), 1),
                      "by_location": false_by_host}}


def lesion_rows(lesions: list[Lesion]) -> list[dict]:
    return [asdict(lesion) for lesion in lesions]


def _grown(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The box one voxel larger on every side (clipped), room for the shell around a component."""
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, shape))


def _dilated(mask: np.ndarray) -> np.ndarray:
    """One-voxel dilation in the 26-neighbourhood (the connectivity of the components)."""
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool))


def _most_common(values: np.ndarray, exclude: tuple[int, ...]) -> int:
    keep = values[~np.isin(values, exclude)] if exclude else values
    return int(np.bincount(keep).argmax()) if keep.size else 0
