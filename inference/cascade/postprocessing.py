"""Connected-component clean-up of organ label maps: pure functions on plain label arrays.

All functions use 26-connectivity (voxels touching by a face, an edge or a corner belong to one
component): organ predictions are thin and oblique in places (adrenals, esophagus, the aorta at
low resolution), and 6-connectivity would split them into pieces that the rules then delete.

Removed voxels become background (0). Inputs are never modified; C- and F-ordered, read-only and
empty arrays are accepted, and the result has the input's dtype and shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import cc3d
import numpy as np

from inference.core.boxes import foreground_box

CONNECTIVITY = 26
_SLAB_VOXELS = 1 << 22  # lookup-table remaps run in slabs so index temporaries stay ~32 MB


@dataclass(frozen=True)
class ComponentRule:
    """What to keep of one label's connected components.

    largest_only: keep only the largest component (ties: the one whose first voxel comes first
        in C (z, y, x) order, whatever the array's memory layout).
    min_voxels: drop components with fewer voxels.
    min_fraction_of_largest: drop components smaller than this fraction of the label's largest.
    The criteria combine (a component must pass all that are set).
    """
    largest_only: bool = False
    min_voxels: int = 0
    min_fraction_of_largest: float = 0.0

    def __post_init__(self):
        if not isinstance(self.largest_only, bool):
            raise ValueError(f"largest_only must be true or false, got {self.largest_only!r}")
        if isinstance(self.min_voxels, bool) or not isinstance(self.min_voxels, (int, np.integer)) \
                or self.min_voxels < 0:
            raise ValueError(f"min_voxels must be a non-negative integer, got {self.min_voxels!r}")
        if not 0.0 <= float(self.min_fraction_of_largest) <= 1.0:
            raise ValueError(f"min_fraction_of_largest must be in [0, 1], got {self.min_fraction_of_largest!r}")


RULE_KEYS = ("largest_only", "min_voxels", "min_fraction_of_largest")

# Single organs keep their largest component; paired or tubular organs (kidneys, esophagus,
# duodenum) may legitimately show as several pieces, so only small fragments go.
LARGEST_ONLY = (1, 3, 4, 5, 6, 7, 8, 9, 11)  # liver, spleen, pancreas, aorta, IVC, adrenals, gallbladder, stomach
FRAGMENT_FRACTION = 0.1
FRAGMENT_LABELS = (2, 10, 12, 13)  # right kidney, esophagus, duodenum, left kidney
DEFAULT_ORGAN_RULES: dict[int, ComponentRule] = {
    **{label: ComponentRule(largest_only=True) for label in LARGEST_ONLY},
    **{label: ComponentRule(min_fraction_of_largest=FRAGMENT_FRACTION) for label in FRAGMENT_LABELS},
}


def parse_rules(spec: Mapping) -> dict[int, ComponentRule]:
    """Manifest JSON (`{"1": {"largest_only": true}, "2": {"min_fraction_of_largest": 0.1}}`) -> rules."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"organ post-processing rules must be a mapping of label -> rule, got {type(spec).__name__}")
    rules = {}
    for key, rule in spec.items():
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"post-processing rule key {key!r} is not an integer label") from None
        if not 1 <= label <= 255:
            raise ValueError(f"post-processing rule label must be in 1..255, got {label}")
        if isinstance(rule, ComponentRule):
            rules[label] = rule
            continue
        if not isinstance(rule, Mapping):
            raise ValueError(f"post-processing rule for label {label} must be a mapping with keys {RULE_KEYS}")
        unknown = sorted(set(rule) - set(RULE_KEYS))
        if unknown:
            raise ValueError(f"post-processing rule for label {label}: unknown keys {unknown}; "
                             f"allowed: {list(RULE_KEYS)}")
        rules[label] = ComponentRule(**rule)
    return rules


def _as_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be a 2D or 3D array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    return labels


def _component_labels(components: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """The label value of each component id (index 0: background)."""
    owner = np.zeros(count + 1, dtype=labels.dtype)
    for slab in _slabs(labels.shape):
        owner[components[slab]] = labels[slab]  # every voxel of a component carries the same label
    owner[0] = 0
    return owner


def _slabs(shape):
    per_slice = max(1, int(np.prod(shape[1:])))
    step = max(1, _SLAB_VOXELS // per_slice)
    return [np.s_[start:start + step] for start in range(0, shape[0], step)]


def _keep_mask(owner: np.ndarray, sizes: np.ndarray, rules: Mapping[int, ComponentRule],
               first_voxel) -> np.ndarray:
    """Per component id: kept (True) or removed (False). `first_voxel(id)` breaks size ties."""
    keep = np.ones(len(owner), dtype=bool)
    for label, rule in rules.items():
        ids = np.flatnonzero(owner == label)
        ids = ids[ids != 0]
        if ids.size == 0:
            continue
        label_sizes = sizes[ids]
        largest = label_sizes.max()
        ok = label_sizes >= rule.min_voxels
        if rule.min_fraction_of_largest > 0:
            ok &= label_sizes >= rule.min_fraction_of_largest * largest
        if rule.largest_only:
            tied = ids[label_sizes == largest]
            winner = tied[0] if tied.size == 1 else min(tied, key=first_voxel)
            ok &= ids == winner
        keep[ids] = ok
    keep[0] = True
    return keep


def apply_rules(labels, rules: Mapping[int, ComponentRule]) -> np.ndarray:
    """One multi-label cc3d pass for every rule, then one lookup-table remap.

    Only the box around the non-zero voxels is labelled: components never reach outside it, the
    order of voxels inside it is the order in the whole array (so ties break the same way), and
    organs fill a few percent of a CT, so cc3d's component map and statistics shrink several times.
    """
    labels = _as_labels(labels)
    result = labels.copy(order="K")
    active = {int(k): v for k, v in rules.items() if v != ComponentRule()}
    box = foreground_box(labels) if labels.size and active else None
    if box is None:
        return result
    labels, cropped = labels[box].copy(order="K"), result[box]  # a contiguous copy: cc3d reads buffers
    components, count = cc3d.connected_components(labels, connectivity=_connectivity(labels), return_N=True)
    stats = cc3d.statistics(components, no_slice_conversion=True)  # boxes as an array: half the time
    sizes = np.asarray(stats["voxel_counts"], dtype=np.int64)
    owner = _component_labels(components, labels, count)

    def first_voxel(component: int) -> tuple[int, ...]:
        # cc3d numbers components in memory order, which differs for C and F arrays; ties go to
        # the component reached first in C (z, y, x) order so the result never depends on layout.
        bounds = stats["bounding_boxes"][component]  # min, max (inclusive) per array axis
        inside_box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(bounds[0::2], bounds[1::2]))
        inside = np.argwhere(components[inside_box] == component)[0]
        return tuple(int(i) + s.start for i, s in zip(inside, inside_box))

    keep = _keep_mask(owner, sizes, active, first_voxel)
    if keep.all():
        return result
    for slab in _slabs(labels.shape):
        cropped[slab][~keep[components[slab]]] = 0
    return result


def _connectivity(labels: np.ndarray) -> int:
    return CONNECTIVITY if labels.ndim == 3 else 8  # the 2D equivalent of 26: edges and corners


def postprocess_organs(labels, rules: Mapping[int, ComponentRule] | None = None) -> np.ndarray:
    """Organ clean-up with `rules` (default: DEFAULT_ORGAN_RULES); labels without a rule are untouched."""
    return apply_rules(labels, DEFAULT_ORGAN_RULES if rules is None else rules)
