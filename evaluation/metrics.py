"""DSC and NSD per label with the FLARE organisers' scoring rules (pure functions on arrays).

Rules (from the FLARE 2023 organisers' evaluation script):
- both masks empty: DSC = NSD = 1; exactly one empty: DSC = NSD = 0 (judged on the whole volume);
- aorta, IVC and esophagus (5, 6, 10): both masks are cut to the ground truth's z-range first;
- NSD is 0 when DSC is below `NSD_MIN_DSC`; otherwise the surface Dice at the label's tolerance.

Two details follow the organisers' code rather than the wording, and are keyword options:
- their z-cut is the half-open slice range `z_lower:z_upper`, which drops the ground truth's last
  slice (`inclusive_z_range=False`, the default); a one-slice ground truth keeps its slice, where
  their code would produce NaN;
- the public FLARE23 script skips NSD below DSC 0.1 for organs; this project scores with the 0.2
  threshold of its design and the organisers' lesion script (`nsd_min_dsc`).
"""
from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

from evaluation.surface import normalized_surface_dice
from inference.core.labels import ALL_LABELS, LABEL_NAMES, ORGAN_LABELS, TUMOR_LABEL

# Organisers' NSD tolerances in mm per label (their evaluation script).
NSD_TOLERANCE_MM: dict[int, float] = {
    1: 5.0, 2: 3.0, 3: 3.0, 4: 5.0, 5: 2.0, 6: 2.0, 7: 2.0,
    8: 2.0, 9: 2.0, 10: 3.0, 11: 5.0, 12: 7.0, 13: 3.0, 14: 2.0,
}
# Tubular structures whose annotated extent in z varies between annotators: scored only on the
# slices the ground truth covers.
Z_RANGE_LABELS = frozenset({5, 6, 10})
NSD_MIN_DSC = 0.2
Z_AXIS = 0  # arrays are (z, y, x)


@dataclass(frozen=True)
class LabelScore:
    label: int
    dsc: float
    nsd: float

    @property
    def name(self) -> str:
        return LABEL_NAMES.get(self.label, f"label_{self.label}")


def dice(mask_gt: np.ndarray, mask_pred: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; NaN when both are empty (the rules decide that case)."""
    total = int(np.count_nonzero(mask_gt)) + int(np.count_nonzero(mask_pred))
    if total == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(mask_gt & mask_pred)) / total


def cut_to_gt_z_range(mask_gt: np.ndarray, mask_pred: np.ndarray, inclusive: bool = False):
    """Both masks restricted to the z slices the ground truth covers (views, no copies)."""
    z_indices = np.flatnonzero(mask_gt.any(axis=(1, 2)))
    if z_indices.size == 0:
        return mask_gt, mask_pred
    z_lower, z_upper = int(z_indices[0]), int(z_indices[-1])
    # Organisers: [z_lower, z_upper) ; inclusive: [z_lower, z_upper]. Never cut to nothing.
    stop = z_upper + 1 if inclusive or z_upper == z_lower else z_upper
    return mask_gt[z_lower:stop], mask_pred[z_lower:stop]


def score_masks(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing, tolerance_mm: float, *,
                cut_z: bool = False, inclusive_z_range: bool = False,
                nsd_min_dsc: float = NSD_MIN_DSC) -> tuple[float, float]:
    """(DSC, NSD) of one structure under the organisers' rules."""
    mask_gt, mask_pred = np.asarray(mask_gt, dtype=bool), np.asarray(mask_pred, dtype=bool)
    if mask_gt.shape != mask_pred.shape:
        raise ValueError(f"mask shapes differ: gt {mask_gt.shape}, pred {mask_pred.shape}")
    gt_empty, pred_empty = not mask_gt.any(), not mask_pred.any()
    if gt_empty and pred_empty:
        return 1.0, 1.0
    if gt_empty or pred_empty:
        return 0.0, 0.0
    if cut_z:
        mask_gt, mask_pred = cut_to_gt_z_range(mask_gt, mask_pred, inclusive_z_range)
    dsc = dice(mask_gt, mask_pred)
    if dsc < nsd_min_dsc:
        return dsc, 0.0
    return dsc, normalized_surface_dice(mask_gt, mask_pred, spacing, tolerance_mm)


def evaluate_case(gt_labels: np.ndarray, pred_labels: np.ndarray, spacing, labels=ALL_LABELS, *,
                  inclusive_z_range: bool = False, nsd_min_dsc: float = NSD_MIN_DSC) -> list[LabelScore]:
    """Scores of every label of one case (label maps of equal shape, spacing zyx in mm).

    Each label is scored on the union bounding box of its two masks: cropping changes no DSC or
    NSD value (see `evaluation.surface`) and keeps the distance transforms small.
    """
    gt_labels, pred_labels = _as_label_map(gt_labels), _as_label_map(pred_labels)
    if gt_labels.shape != pred_labels.shape:
        raise ValueError(f"label map shapes differ: gt {gt_labels.shape}, pred {pred_labels.shape}")
    boxes_gt, boxes_pred = _label_boxes(gt_labels), _label_boxes(pred_labels)
    scores = []
    for label in labels:
        box_gt, box_pred = boxes_gt.get(label), boxes_pred.get(label)
        if box_gt is None or box_pred is None:
            value = 1.0 if box_gt is None and box_pred is None else 0.0
            scores.append(LabelScore(label, value, value))
            continue
        box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box_gt, box_pred))
        dsc, nsd = score_masks(gt_labels[box] == label, pred_labels[box] == label, spacing,
                               NSD_TOLERANCE_MM[label], cut_z=label in Z_RANGE_LABELS,
                               inclusive_z_range=inclusive_z_range, nsd_min_dsc=nsd_min_dsc)
        scores.append(LabelScore(label, dsc, nsd))
    return scores


def _as_label_map(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"label maps must be 3D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label maps must hold integers, got {labels.dtype}")
    return labels


def _label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every label present, in one C pass (cc3d) instead of one pass per label."""
    if labels.size == 0 or int(labels.max()) == 0:
        return {}
    if labels.min() < 0:
        raise ValueError("label maps must not hold negative values")
    stats = cc3d.statistics(np.ascontiguousarray(labels))
    return {label: box for label, (count, box) in enumerate(zip(stats["voxel_counts"], stats["bounding_boxes"]))
            if label > 0 and count > 0}
